"""Build a search engine by name from the config: one place that knows every engine."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from zerosearch.config import Config
from zerosearch.protocol import SearchEngine

ENGINES = ("bm25", "simulated", "hybrid", "dense", "web")


def simulator_template(cfg: Config):
    """The ``PromptTemplate`` of ``simulator.prompt`` (a file in ``configs/prompts/``), or of
    ``simulator.prompt_template_file`` when that names a file (relative to the working directory)."""
    from zerosearch.search.templates import load_template, named_template

    sim = cfg.simulator
    return load_template(sim.prompt_template_file) if sim.prompt_template_file else named_template(sim.prompt)


def simulator_client(cfg: Config, simulator_url: str | list[str], *, cache: bool = True):
    """A ``SimulatorClient`` sending requests the way ``simulator.api`` / ``system_message`` say;
    ``cache=False`` leaves ``simulator.cache_dir`` out (the probe must not fill training's cache)."""
    from zerosearch.search.client import SimulatorClient

    sim = cfg.simulator
    return SimulatorClient(
        simulator_url, model=cfg.served_simulator(), api=sim.api, system_message=sim.system_message,
        timeout=sim.request_timeout, max_retries=sim.max_retries, concurrency=sim.concurrency,
        stall_timeout=sim.stall_timeout,
        cache_dir=sim.cache_dir if cache else None,
    )


def inprocess_completer(cfg: Config, *, rank: int = 0, device=None):
    """``simulator.backend: inprocess``: the simulator model (``cfg.served_simulator()``) loaded
    in this process (on ``device``, default CPU) behind an ``InProcessCompleter`` whose RNG
    mixes in ``rank`` (each training process draws its own documents)."""
    from zerosearch.lm.models import load_model
    from zerosearch.search.local import InProcessCompleter

    model, tokenizer = load_model(cfg.served_simulator(), trust_remote_code=cfg.base.trust_remote_code)
    if device is not None:
        model = model.to(device)
    sim = cfg.simulator
    return InProcessCompleter(model, tokenizer, rank=rank, api=sim.api, system_message=sim.system_message)


def simulated_engine(cfg: Config, simulator_url: str | list[str] | None = None, *, total_steps: int | None = None,
                     completer=None, seed: int | None = None) -> SearchEngine:
    """The simulated engine over ``completer`` (a ``Completer``), else a client of the server at
    ``simulator_url`` (``.../v1``; a list of URLs: requests are spread over the servers round-robin).
    ``seed`` (default ``base.seed``) seeds its noise draws and every request's sampling."""
    from zerosearch.search.simulated import SimulatedEngine

    if completer is None:
        completer = simulator_client(cfg, simulator_url)
    sim, c = cfg.simulator, cfg.simulator.curriculum
    return SimulatedEngine(completer, template=simulator_template(cfg),
                           top_k=cfg.search.top_k, max_tokens=sim.max_tokens, temperature=sim.temperature,
                           top_p=sim.top_p, p_start=c.p_start, p_end=c.p_end, base=c.base,
                           total_steps=total_steps or cfg.train.total_steps,
                           seed=cfg.base.seed if seed is None else seed, schedule=c.schedule)


def real_engine(cfg: Config, name: str = "bm25") -> SearchEngine:
    """A real engine: BM25 or dense over the data stage's corpus, or the web API."""
    data = cfg.path("data")
    if name == "bm25":
        from zerosearch.search.bm25 import BM25Engine

        return BM25Engine.load(data / "bm25", top_k=cfg.search.top_k)
    if name == "dense":
        from zerosearch.search.dense import DenseEngine

        if (data / "dense").exists():
            return DenseEngine.load(data / "dense", top_k=cfg.search.top_k)
        from zerosearch.search.dense import default_model_path

        return DenseEngine.from_corpus(data / "corpus.jsonl", model=default_model_path(), top_k=cfg.search.top_k)
    if name == "web":
        from zerosearch.search.web import WebSearchEngine

        return WebSearchEngine(top_k=cfg.search.top_k)
    raise ValueError(f"unknown real engine {name!r}; known: bm25, dense, web")


def make_engine(cfg: Config, name: str, *, simulator_url: str | list[str] | None = None,
                total_steps: int | None = None, completer=None, rank: int = 0, device=None,
                seed: int | None = None) -> SearchEngine:
    """Engine ``name`` (one of ENGINES). Simulated and hybrid ask ``completer`` when given, else
    the running server at ``simulator_url`` when given, else, under ``simulator.backend:
    inprocess``, a simulator loaded here (``inprocess_completer``, ``rank``, ``device``).
    ``seed`` (default ``base.seed``; the train stage passes ``train.seed``) seeds the simulated
    and hybrid engines' draws."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")
    if needs_simulator(name):
        if completer is None and simulator_url is None and cfg.simulator.backend == "inprocess":
            completer = inprocess_completer(cfg, rank=rank, device=device)
        if completer is None and simulator_url is None:
            raise ValueError(f"the {name} engine needs a simulator server URL (see zerosearch.serving)")
        seed = cfg.base.seed if seed is None else seed
        sim = simulated_engine(cfg, simulator_url, total_steps=total_steps, completer=completer, seed=seed)
        if name == "simulated":
            return sim
        from zerosearch.search.hybrid import HybridEngine

        return HybridEngine(sim, real_engine(cfg, "bm25"), real_fraction=cfg.simulator.hybrid_real_fraction,
                            seed=seed)
    return real_engine(cfg, name)


def needs_simulator(name: str) -> bool:
    """Whether engine ``name`` asks a simulator LLM for its documents (served or in process)."""
    return name in ("simulated", "hybrid")


def needs_server(cfg: Config, name: str) -> bool:
    """Whether engine ``name`` needs a simulator server: it asks the simulator and
    ``simulator.backend`` is not ``inprocess``."""
    return needs_simulator(name) and cfg.simulator.backend != "inprocess"


def _refuse_inprocess(cfg: Config) -> None:
    if cfg.simulator.backend == "inprocess":
        raise ValueError("simulator.backend is inprocess: the simulator runs inside the process that searches, "
                         "there is no server to start; set simulator.backend to transformers, sglang or vllm "
                         "to serve it (e.g. --set simulator.backend=transformers)")


def server_spec(cfg: Config):
    """The ``ServerSpec`` that serves this config's simulator: ``simulator.server_args`` go to
    every backend's command line, ``simulator.cuda_visible_devices`` into its environment.
    Raises ValueError under ``simulator.backend: inprocess`` (nothing to serve)."""
    from zerosearch.serving import ServerSpec

    _refuse_inprocess(cfg)
    sim = cfg.simulator
    url = sim.url[0] if isinstance(sim.url, list) else sim.url
    env = {"CUDA_VISIBLE_DEVICES": sim.cuda_visible_devices} if sim.cuda_visible_devices is not None else None
    return ServerSpec(backend=sim.backend, model=cfg.served_simulator(), port=sim.port, tp=sim.tp, dp=sim.dp,
                      url=url, extra_args=tuple(sim.server_args), env=env)


@contextlib.contextmanager
def simulator_urls(cfg: Config, *, log_path: str | Path | None = None) -> Iterator[str | list[str]]:
    """The simulator's base URL once it answers (a list with several ``simulator.url``): served
    here for the context (and stopped after) unless ``simulator.backend`` is ``url``. Raises
    ValueError under ``inprocess`` (no server: ``make_engine`` loads the simulator itself)."""
    from zerosearch.serving import ServerSpec, serve_simulator

    _refuse_inprocess(cfg)
    sim = cfg.simulator
    if sim.backend == "url" and isinstance(sim.url, list):  # several running servers, load-balanced
        with contextlib.ExitStack() as stack:
            yield [stack.enter_context(serve_simulator(ServerSpec(backend="url", model=cfg.served_simulator(), url=u),
                                                       startup_timeout=sim.startup_timeout)) for u in sim.url]
        return
    with serve_simulator(server_spec(cfg), startup_timeout=sim.startup_timeout, log_path=log_path) as url:
        yield url


@contextlib.contextmanager
def open_engine(cfg: Config, name: str, *, total_steps: int | None = None,
                log_path: str | Path | None = None, seed: int | None = None) -> Iterator[SearchEngine]:
    """Engine ``name``, with the simulator served (and stopped after) when it needs a server
    (``needs_server``); an in-process simulator is loaded by ``make_engine``."""
    if not needs_server(cfg, name):
        yield make_engine(cfg, name, total_steps=total_steps, seed=seed)
        return
    with simulator_urls(cfg, log_path=log_path) as url:
        yield make_engine(cfg, name, simulator_url=url, total_steps=total_steps, seed=seed)
