"""Prefect tasks of the base stage: thin wrappers over zerosearch.base_models."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from zerosearch.base_models import build_base

build_base_task = task(build_base, name="build-base-models", cache_policy=NO_CACHE)
