"""Prefect task of the data stage: a thin wrapper over zerosearch.stages.data."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from zerosearch.stages import data

data_task = task(data.run, name="data", cache_policy=NO_CACHE)
