"""Airflow roles of Resguardo under the FAB auth manager, computed from the configured databases.

Terms:

- *permission*: a pair ``(action, resource)`` of Flask-AppBuilder (FAB).
  Actions are ``can_read``, ``can_edit``, ``can_create``, ``can_delete`` and
  ``menu_access``. A resource is global (``DAGs``, ``DAG Runs``, ``Task Logs``)
  or belongs to one DAG (``DAG:<dag_id>``, ``DAG Run:<dag_id>``).
- *role*: a named set of permissions. Users get roles from their identity
  provider groups at each login (``webserver_config.py``).
- *trigger*: starting a DAG run. ``FabAuthManager.is_authorized_dag``
  (apache-airflow-providers-fab 3.10.2) allows it when a role has
  ``can_create`` on ``DAG Runs`` or ``DAG Run:<dag_id>`` AND ``can_edit`` on
  ``DAGs`` or ``DAG:<dag_id>``. ``can_edit`` on a DAG also allows pausing it
  and clearing its task instances, which runs them again, so a role gets
  ``can_edit`` only on the DAGs it may trigger, and never on ``DAGs`` as a whole.
- *DAG kind*: the family a DAG id belongs to, e.g. ``dr_rehearsal`` for
  ``resguardo_dr_rehearsal_<db>``. :data:`DAG_KINDS` lists them with their ids.

The four roles:

- ``resguardo_dba``: reads everything; triggers backups, base backups,
  archive checks, restore tests and masked refreshes.
- ``resguardo_compliance``: reads DAGs, runs, task logs and the evidence
  viewer; changes nothing.
- ``resguardo_dr_coordinator``: reads everything; the only role that
  triggers DR rehearsals, failovers and failbacks.
- ``resguardo_automation``: the service account of other systems; triggers
  backups, base backups, archive checks and restore tests through the REST
  API and reads their runs.

Admin keeps every permission, as FAB grants it, so give that role only to
the platform team.

Usage, from the repository root:

    python -m deploy.airflow.roles plan            # the role table
    python -m deploy.airflow.roles json            # JSON for [fab] custom_roles
    python -m deploy.airflow.roles apply           # create or update the roles in Airflow's database
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, Iterable

from resguardo.errors import ConfigError, ResguardoError
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("deploy.roles")

ROLE_DBA = "resguardo_dba"
ROLE_COMPLIANCE = "resguardo_compliance"
ROLE_DR_COORDINATOR = "resguardo_dr_coordinator"
ROLE_AUTOMATION = "resguardo_automation"
ROLES = (ROLE_DBA, ROLE_COMPLIANCE, ROLE_DR_COORDINATOR, ROLE_AUTOMATION)

# The plugin ``plugins/resguardo_evidence.py`` checks this custom-view
# permission. FAB has no such resource until ``apply`` creates it.
EVIDENCE_RESOURCE = "Resguardo Evidence"

CAN_READ = "can_read"
CAN_EDIT = "can_edit"
CAN_CREATE = "can_create"
CAN_DELETE = "can_delete"
MENU_ACCESS = "menu_access"

DAG_PREFIX = "DAG:"
DAG_RUN_PREFIX = "DAG Run:"

Permission = tuple[str, str]


@dataclass(frozen=True)
class DagKind:
    """A family of Resguardo DAGs: its id template and who may trigger it."""

    name: str
    template: str
    triggered_by: tuple[str, ...]


# DAG ids as written by dags/*.py. Failover and failback are one DAG each
# for all databases; the database is a parameter of the run.
DAG_KINDS = (
    DagKind("backup", "resguardo_backup_{database}", (ROLE_DBA, ROLE_AUTOMATION)),
    DagKind("restore_test", "resguardo_restore_test_{database}", (ROLE_DBA, ROLE_AUTOMATION)),
    DagKind("basebackup", "resguardo_basebackup_{database}", (ROLE_DBA, ROLE_AUTOMATION)),
    DagKind("archive_check", "resguardo_archive_check_{database}", (ROLE_DBA, ROLE_AUTOMATION)),
    DagKind("masking", "resguardo_masking_{database}_{target}", (ROLE_DBA,)),
    DagKind("dr_rehearsal", "resguardo_dr_rehearsal_{database}", (ROLE_DR_COORDINATOR,)),
    DagKind("failover", "resguardo_dr_failover", (ROLE_DR_COORDINATOR,)),
    DagKind("failback", "resguardo_dr_failback", (ROLE_DR_COORDINATOR,)),
    DagKind("evidence_verify", "resguardo_evidence_verify", (ROLE_DBA, ROLE_AUTOMATION)),
)
KINDS_BY_NAME = {kind.name: kind for kind in DAG_KINDS}
DR_KINDS = ("dr_rehearsal", "failover", "failback")

# Read-only permissions shared by the human roles: FAB's Viewer role
# (provider 3.10.2) without password and profile editing, which OAuth users
# do not have.
READ_PERMISSIONS: tuple[Permission, ...] = (
    (CAN_READ, "DAGs"),
    (CAN_READ, "DAG Dependencies"),
    (CAN_READ, "DAG Code"),
    (CAN_READ, "DAG Runs"),
    (CAN_READ, "DAG Versions"),
    (CAN_READ, "DAG Warnings"),
    (CAN_READ, "Assets"),
    (CAN_READ, "Asset Aliases"),
    (CAN_READ, "Backfills"),
    (CAN_READ, "Cluster Activity"),
    (CAN_READ, "Pools"),
    (CAN_READ, "ImportError"),
    (CAN_READ, "Jobs"),
    (CAN_READ, "My Profile"),
    (CAN_READ, "SLA Misses"),
    (CAN_READ, "Task Instances"),
    (CAN_READ, "Task Logs"),
    (CAN_READ, "XComs"),
    (CAN_READ, "HITL Detail"),
    (CAN_READ, "Website"),
    (MENU_ACCESS, "Browse"),
    (MENU_ACCESS, "DAGs"),
    (MENU_ACCESS, "DAG Dependencies"),
    (MENU_ACCESS, "DAG Runs"),
    (MENU_ACCESS, "Assets"),
    (MENU_ACCESS, "Cluster Activity"),
    (MENU_ACCESS, "Docs"),
    (MENU_ACCESS, "Documentation"),
    (MENU_ACCESS, "Jobs"),
    (MENU_ACCESS, "SLA Misses"),
    (MENU_ACCESS, "Task Instances"),
)

# Read permissions of the service account: run states and task results, no
# UI menus. FAB adds "can_read Website" to every custom role at start-up, so it is
# listed here too; otherwise each ``apply`` would remove it again.
AUTOMATION_READ_PERMISSIONS: tuple[Permission, ...] = (
    (CAN_READ, "Website"),
    (CAN_READ, "DAGs"),
    (CAN_READ, "DAG Runs"),
    (CAN_READ, "Task Instances"),
    (CAN_READ, "Task Logs"),
    (CAN_READ, "XComs"),
    (CAN_READ, "Assets"),
)


def dag_resource(dag_id: str) -> str:
    """Return the FAB resource of one DAG.

    >>> dag_resource("resguardo_backup_core")
    'DAG:resguardo_backup_core'
    """
    return f"{DAG_PREFIX}{dag_id}"


def dag_run_resource(dag_id: str) -> str:
    """Return the FAB resource of one DAG's runs.

    >>> dag_run_resource("resguardo_backup_core")
    'DAG Run:resguardo_backup_core'
    """
    return f"{DAG_RUN_PREFIX}{dag_id}"


def trigger_permissions(dag_id: str) -> set[Permission]:
    """Return the permissions that let a role trigger ``dag_id`` and read its runs.

    Clearing or marking task instances also needs ``can_edit`` on the global
    ``Task Instances`` and ``DAG Runs`` resources, which no Resguardo role
    has, so a failed run is retried by triggering a new one.
    """
    return {
        (CAN_EDIT, dag_resource(dag_id)),
        (CAN_READ, dag_resource(dag_id)),
        (CAN_CREATE, dag_run_resource(dag_id)),
        (CAN_READ, dag_run_resource(dag_id)),
        (MENU_ACCESS, dag_run_resource(dag_id)),
    }


def can_trigger(permissions: Iterable[Permission], dag_id: str) -> bool:
    """Return whether ``permissions`` allow triggering ``dag_id`` under FabAuthManager's rule.

    >>> can_trigger(trigger_permissions("resguardo_backup_core"), "resguardo_backup_core")
    True
    >>> can_trigger(trigger_permissions("resguardo_backup_core"), "resguardo_failover_core")
    False
    """
    granted = set(permissions)
    may_create_run = (CAN_CREATE, "DAG Runs") in granted or (CAN_CREATE, dag_run_resource(dag_id)) in granted
    may_edit_dag = (CAN_EDIT, "DAGs") in granted or (CAN_EDIT, dag_resource(dag_id)) in granted
    return may_create_run and may_edit_dag


# -- DAG ids from the configuration ---------------------------------------------------


def masking_targets(config: Any) -> dict[str, list[str]]:
    """Return ``{database: [target, ...]}`` from ``masking.yaml``, or {} when it is absent or invalid.

    The masking DAG file registers no DAG in either case, so no role needs a
    permission for one.
    """
    from masking.pipeline import load_for

    try:
        masking = load_for(config)
    except ConfigError as error:
        log.warning("deploy.roles.masking_skipped", extra={"error": error.message})
        return {}
    return {database: sorted(settings.targets) for database, settings in masking.databases.items()}


def dag_ids_by_kind(databases: dict[str, Any], masking: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Return the DAG ids of every kind for the configured ``databases``.

    ``databases`` maps a name to its ``DatabaseConfig`` (or None, meaning
    every kind applies). Base backup and archive check DAGs exist only with
    ``pitr.enabled``, as in dags/pitr.py. DR DAG ids are listed whenever a
    database is configured, although dags/dr_*.py register them only with
    PITR or a DR standby. A permission on a DAG that does not exist grants
    nothing, and a DAG added later is then covered from its first parse.
    """
    ids: dict[str, list[str]] = {kind.name: [] for kind in DAG_KINDS}
    for database in sorted(databases):
        settings = databases[database]
        pitr_enabled = settings is None or bool(settings.pitr.enabled)
        for kind in DAG_KINDS:
            if kind.name == "masking":
                continue
            if kind.name in ("basebackup", "archive_check") and not pitr_enabled:
                continue
            dag_id = kind.template.format(database=database)
            if dag_id not in ids[kind.name]:
                ids[kind.name].append(dag_id)
    for database in sorted(masking or {}):
        for target in sorted(masking[database]):
            ids["masking"].append(KINDS_BY_NAME["masking"].template.format(database=database, target=target))
    return ids


def build_roles(ids_by_kind: dict[str, list[str]]) -> dict[str, set[Permission]]:
    """Return the permissions of each Resguardo role for the given DAG ids."""
    roles: dict[str, set[Permission]] = {
        ROLE_DBA: set(READ_PERMISSIONS) | {(CAN_READ, EVIDENCE_RESOURCE)},
        ROLE_COMPLIANCE: set(READ_PERMISSIONS) | {(CAN_READ, EVIDENCE_RESOURCE)},
        ROLE_DR_COORDINATOR: set(READ_PERMISSIONS) | {(CAN_READ, EVIDENCE_RESOURCE)},
        ROLE_AUTOMATION: set(AUTOMATION_READ_PERMISSIONS),
    }
    for kind in DAG_KINDS:
        for dag_id in ids_by_kind.get(kind.name, []):
            for role in kind.triggered_by:
                roles[role] |= trigger_permissions(dag_id)
    return roles


def roles_from_config(config: Any) -> dict[str, set[Permission]]:
    """Return the role permissions for every DAG the configuration registers."""
    return build_roles(dag_ids_by_kind(dict(config.databases), masking_targets(config)))


def custom_roles_json(roles: dict[str, set[Permission]]) -> str:
    """Return the value of ``[fab] custom_roles``: ``{role: [{"action", "resource"}, ...]}``.

    FAB creates these roles at API server start only when they are missing
    and never updates an existing role. It also stops with an error when a
    resource does not exist yet. DAG resources appear once the DAG processor
    parsed the DAG, and the evidence resource once ``apply`` ran. ``apply``
    has none of these limits.
    """
    document = {
        role: [{"action": action, "resource": resource} for action, resource in sorted(permissions)]
        for role, permissions in sorted(roles.items())
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def trigger_matrix(roles: dict[str, set[Permission]], dag_ids: Iterable[str]) -> dict[str, list[str]]:
    """Return ``{dag_id: [roles that can trigger it]}``; Admin is not listed."""
    return {dag_id: [role for role in ROLES if can_trigger(roles[role], dag_id)] for dag_id in sorted(dag_ids)}


# -- applying to Airflow's database -------------------------------------------------------


@dataclass
class ApplyReport:
    """Changes made by ``apply``, per role."""

    created_roles: list[str]
    added: dict[str, list[Permission]]
    removed: dict[str, list[Permission]]


def apply_roles(roles: dict[str, set[Permission]], *, prune: bool = True, dry_run: bool = False) -> ApplyReport:
    """Create the roles and their permissions in Airflow's metadata database through FAB.

    Missing resources (DAGs not parsed yet, the evidence resource) are
    created. With ``prune``, permissions that a Resguardo role holds but the
    plan does not list are removed, so removing a database or a kind revokes
    its triggers. Needs an Airflow installation with
    apache-airflow-providers-fab and ``[core] auth_manager`` set to FabAuthManager.
    """
    # Imported here: the rest of this module is pure Python and runs without Airflow.
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    report = ApplyReport(created_roles=[], added={}, removed={})
    with get_application_builder() as appbuilder:
        security = appbuilder.sm
        for role_name, wanted in sorted(roles.items()):
            role = security.find_role(role_name)
            if role is None:
                report.created_roles.append(role_name)
                role = None if dry_run else security.add_role(role_name)
            current = set() if role is None else {(perm.action.name, perm.resource.name) for perm in role.permissions}

            to_add = sorted(wanted - current)
            to_remove = sorted(current - wanted) if prune else []
            report.added[role_name] = to_add
            report.removed[role_name] = to_remove
            if dry_run:
                continue

            for action, resource in to_add:
                permission = security.create_permission(action, resource)
                security.add_permission_to_role(role, permission)
            for action, resource in to_remove:
                permission = security.get_permission(action, resource)
                if permission is not None:
                    security.remove_permission_from_role(role, permission)
            log.info("deploy.roles.applied",
                     extra={"role": role_name, "added": len(to_add), "removed": len(to_remove)})
    return report


# -- command line --------------------------------------------------------------------------


def _print(text: str = "") -> None:
    print(text, flush=True)


def _describe_role(role: str) -> str:
    descriptions = {
        ROLE_DBA: _("DBAs: read everything; trigger backups, base backups, archive checks, restore tests and masked refreshes"),
        ROLE_COMPLIANCE: _("Compliance officers: read DAGs, runs, task logs and evidence; change nothing"),
        ROLE_DR_COORDINATOR: _("DR coordinators: read everything; the only ones who trigger DR rehearsals, failovers and failbacks"),
        ROLE_AUTOMATION: _("Automation (service account): triggers backups, base backups, archive checks and restore tests; reads their runs"),
    }
    return descriptions[role]


def print_plan(roles: dict[str, set[Permission]], ids_by_kind: dict[str, list[str]]) -> None:
    """Print each role, its trigger rights per DAG and its permission count."""
    all_ids = [dag_id for ids in ids_by_kind.values() for dag_id in ids]
    for role in ROLES:
        _print(f"{role}: {_describe_role(role)}")
        _print("  " + _("{count} permissions").format(count=len(roles[role])))
    _print()
    _print(_("Who can trigger each DAG (Admin always can):"))
    for dag_id, allowed in trigger_matrix(roles, all_ids).items():
        _print(f"  {dag_id}: {', '.join(allowed) or '-'}")


def _print_apply_report(report: ApplyReport, dry_run: bool) -> None:
    if dry_run:
        _print(_("Dry run: nothing was changed."))
    for role in report.created_roles:
        _print(_("Role {role} created.").format(role=role))
    for role in sorted(report.added):
        for action, resource in report.added[role]:
            _print(f"  + {role}: {action} {resource}")
        for action, resource in report.removed[role]:
            _print(f"  - {role}: {action} {resource}")
    added = sum(len(items) for items in report.added.values())
    removed = sum(len(items) for items in report.removed.values())
    _print(_("Permissions added: {added}; removed: {removed}.").format(added=added, removed=removed))


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``python -m deploy.airflow.roles``."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.airflow.roles",
        description=_("Compute Resguardo's Airflow roles from the configured databases and apply them."),
    )
    parser.add_argument("--config", help=_("path of resguardo.yaml (default: RESGUARDO_CONFIG, then ./resguardo.yaml)"))
    actions = parser.add_subparsers(dest="action", metavar=_("ACTION"), required=True)
    actions.add_parser("plan", help=_("print the roles and who can trigger each DAG"))
    actions.add_parser("json", help=_("print the roles as JSON for [fab] custom_roles"))
    apply = actions.add_parser("apply", help=_("create or update the roles in Airflow's metadata database"))
    apply.add_argument("--dry-run", action="store_true", help=_("print the changes without making them"))
    apply.add_argument("--keep-extra", action="store_true",
                       help=_("keep permissions that a Resguardo role has but the plan does not list"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    from resguardo.config import load_config
    from resguardo.log import configure

    configure()
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        ids_by_kind = dag_ids_by_kind(dict(config.databases), masking_targets(config))
        roles = build_roles(ids_by_kind)
        if args.action == "plan":
            print_plan(roles, ids_by_kind)
        elif args.action == "json":
            _print(custom_roles_json(roles))
        else:
            report = apply_roles(roles, prune=not args.keep_extra, dry_run=args.dry_run)
            _print_apply_report(report, args.dry_run)
    except ResguardoError as error:
        print(error.render(), file=sys.stderr, flush=True)
        return error.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main())
