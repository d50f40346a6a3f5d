"""Prefect task of the simulator_sft stage: a thin wrapper over zerosearch.stages.simulator_sft."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from zerosearch.stages import simulator_sft

simulator_sft_task = task(simulator_sft.run, name="simulator_sft", cache_policy=NO_CACHE)
