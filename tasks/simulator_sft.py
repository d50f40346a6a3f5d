"""Prefect tasks of the simulator SFT stage: thin wrappers over zerosearch.simulator_sft."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from zerosearch.simulator_sft import build_simulator_sft

build_simulator_sft_task = task(build_simulator_sft, name="simulator-sft", cache_policy=NO_CACHE)
