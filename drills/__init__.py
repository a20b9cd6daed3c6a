"""DR rehearsals, failover and failback of the protected PostgreSQL databases.

Modules: :mod:`drills.topology` (nodes and state probes), :mod:`drills.router`
(PgBouncer switching), :mod:`drills.fencing`, :mod:`drills.failover`,
:mod:`drills.failback`, :mod:`drills.rehearsal` (isolated rebuilds with
measured RTO and RPO), :mod:`drills.report` (the coordinators' report),
:mod:`drills.validation`, :mod:`drills.records` (signed evidence) and
:mod:`drills.alerting` (webhook alerts). ``docs/dr.md`` is the runbook.
The package does not import Airflow; the DAGs in ``dags/dr_*.py`` call it.
"""
