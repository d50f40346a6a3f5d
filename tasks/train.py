"""Prefect task of the train stage: a thin wrapper over zerosearch.stages.train."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from zerosearch.stages import train

train_task = task(train.run, name="train", cache_policy=NO_CACHE)
