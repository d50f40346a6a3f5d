"""The kind of error a user acts on: bad input (a params key, a data row, a file) or an
environment to fix (a server that does not start or answer, a dataset that is not there).

Every such error class also derives from ``InputError``. The CLI and ``python -m
flows.<stage>`` print one of them as one line naming what to fix and exit with code 2,
and Prefect's log keeps its one-line message without the traceback; any other exception is
a bug and keeps its full traceback.
"""


class InputError(Exception):
    """Bad input or environment the message says how to fix; shown without a traceback."""
