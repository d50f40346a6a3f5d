"""Prefect tasks of the evaluate stage: thin wrappers over zerosearch.evaluate."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from zerosearch.evaluate import evaluate

evaluate_task = task(evaluate, name="evaluate", cache_policy=NO_CACHE)
