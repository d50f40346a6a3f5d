"""Prefect tasks of the train stage: thin wrappers over zerosearch.training."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from zerosearch.training import train_policy

train_policy_task = task(train_policy, name="train-policy", cache_policy=NO_CACHE)
