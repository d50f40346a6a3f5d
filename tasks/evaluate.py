"""Prefect tasks of the evaluate stage: thin wrappers over zerosearch.stages.evaluate and the
registry (the agent is registered in MLflow after it is scored)."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from zerosearch.mlops.registry import register_agent
from zerosearch.stages import evaluate

evaluate_task = task(evaluate.run, name="evaluate", cache_policy=NO_CACHE)
register_agent_task = task(register_agent, name="register-agent", cache_policy=NO_CACHE)
