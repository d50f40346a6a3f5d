"""Prefect tasks shared by every stage, and how Prefect logs a stage's ``InputError``."""

import logging

from prefect import task
from prefect.cache_policies import NO_CACHE

from zerosearch.config import load_config
from zerosearch.environment import write_environment
from zerosearch.errors import InputError
from zerosearch.mlops.headline import write_metrics

load_config_task = task(load_config, name="load-config", cache_policy=NO_CACHE)
# the full metrics file and its headline (metrics/headline/<stage>.json, what dvc metrics show prints)
write_metrics_task = task(write_metrics, name="write-metrics", cache_policy=NO_CACHE)
write_environment_task = task(write_environment, name="write-environment", cache_policy=NO_CACHE)


class _WithoutInputErrorTraceback(logging.Filter):
    """Prefect logs a failed task or flow with its traceback; for an ``InputError`` (bad input
    the message says how to fix) the one-line message is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], InputError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_input_errors() -> None:
    """Install the filter on every handler of Prefect's loggers (idempotent)."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == "prefect" or name.startswith("prefect.")]
    for handler in {h for lg in [*loggers, logging.getLogger()] for h in lg.handlers}:
        if not any(isinstance(f, _WithoutInputErrorTraceback) for f in handler.filters):
            handler.addFilter(_WithoutInputErrorTraceback())


quiet_input_errors()
