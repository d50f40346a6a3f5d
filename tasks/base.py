"""Prefect task of the base stage: a thin wrapper over zerosearch.stages.base."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from zerosearch.stages import base

base_task = task(base.run, name="base", cache_policy=NO_CACHE)
