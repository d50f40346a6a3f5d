"""The search agent: the multi-turn rollout, evaluation methods, and ``Agent.ask``."""

MOVED_PYFUNC = (
    "this MLflow model was registered with zerosearch 0.1, whose pyfunc class zerosearch.agent.AgentPyfunc "
    "is now zerosearch.mlops.registry.AgentPyfunc (zerosearch 0.2): it cannot be loaded; register the policy "
    "again with `zerosearch evaluate` (or `dvc repro evaluate --force`)")


class _MovedAgentPyfunc:
    """What unpickling a 0.1 model finds at ``zerosearch.agent.AgentPyfunc``: creating it
    raises with what to do (this layer must not import the MLOps layer to re-export it)."""

    def __new__(cls, *args, **kwargs):
        raise RuntimeError(MOVED_PYFUNC)


def __getattr__(name: str):
    if name == "AgentPyfunc":
        return _MovedAgentPyfunc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
