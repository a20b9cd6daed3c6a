"""LOPDP masking of non-production copies.

A masked refresh (:func:`masking.pipeline.run_masked_refresh`) restores a
verified backup into a scratch cluster and checks the reviewed policy against
it (:mod:`masking.policy`, :mod:`masking.discovery`). It then removes the data
subjects of the suppression list (:mod:`masking.suppression`) and masks every
column in place (:mod:`masking.engine`, :mod:`masking.transformers`). Finally
it proves that no original personal data remains (:mod:`masking.proof`), loads
the copy into a non-production target and records signed evidence. See
``docs/masking.md``.

The core imports neither Airflow nor Great Expectations at import time.
"""
