"""The one exception type users see as a clean, one-line error."""


class WitError(Exception):
    """A problem with the user's input or environment, reported as one line (no traceback).

    The message must name the file, record or setting at fault, e.g.
    ``candidates/part-00000.parquet: no 'caption' column``.
    """


class StoreError(WitError, OSError):
    """A store (S3, GCS, ...) could not be read or written: one line for the user like any WitError, and an
    OSError, so that a Ray task that meets it is tried again (a transient error, unlike bad input)."""
