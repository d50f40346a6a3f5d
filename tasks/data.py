"""Prefect tasks of the data stage: thin wrappers over zerosearch.data."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from zerosearch.data.build import build_data

build_data_task = task(build_data, name="build-data", cache_policy=NO_CACHE)
