"""``python -m flows.<stage>``: what each DVC stage's ``cmd`` runs.

``main(flow)`` validates ``params.yaml`` first, so a bad key fails in one line naming it
(exit code 2) instead of a Prefect traceback, then runs the stage's flow on it; an
``InputError`` the stage raises (a bad row or file, a server that does not start) is one line
and exit code 2 too. The flow runs in a ``flow_session`` (flows/session.py): Prefect's temporary
server dies with this process, and runs of killed processes end Crashed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from flows.session import flow_session
from zerosearch.config import ConfigError, load_config
from zerosearch.errors import InputError
from zerosearch.tether import exit_on_termination_signals


def main(flow: Callable[..., dict], params: str = "params.yaml") -> None:
    exit_on_termination_signals()  # `dvc exp` stopped, a CI job cancelled: servers stop with us
    try:
        load_config(params)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        with flow_session():
            flow(params)
    except InputError as e:  # bad input or environment: one line, what to fix (Prefect logged it too)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
