"""Prefect flows (``build-wit``) and the ``wit`` command line. Thin: the work lives in the libraries."""
from pipeline.core.env import set_quiet_env

set_quiet_env()  # telemetry and update checks off before Prefect (imported by the flows) reads its settings
