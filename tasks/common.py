"""Prefect tasks shared by every stage."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from zerosearch.atomic import write_json
from zerosearch.config import load_config
from zerosearch.environment import write_environment

load_config_task = task(load_config, name="load-config", cache_policy=NO_CACHE)
write_metrics_task = task(write_json, name="write-metrics", cache_policy=NO_CACHE)
write_environment_task = task(write_environment, name="write-environment", cache_policy=NO_CACHE)
