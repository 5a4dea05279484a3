"""Prefect flows (``build-wit``) and the ``wit`` command line. Thin: the work lives in the libraries."""
