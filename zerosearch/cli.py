"""The ``zerosearch`` command line: one subcommand per pipeline stage, plus helpers.

Every stage command takes ``--params FILE`` (a preset is a params file) and repeatable
``--set section.key=value`` overrides, validates them, and runs the stage's Prefect flow.
``dvc repro`` runs the same commands (see dvc.yaml).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from zerosearch.config import Config, ConfigError, load_config

app = typer.Typer(
    help="ZeroSearch: train a search agent against a simulated search engine.\n\n"
    "Stages: data -> base -> simulator_sft -> train -> evaluate (aliases: sft, eval); `dvc repro` runs them all; `zerosearch ask` queries the agent, `zerosearch serve-agent` serves it (OpenAI API). "
    "`zerosearch serve` serves the simulator, `zerosearch simulator probe` checks its useful/noisy switch. `zerosearch experiment` runs a DVC experiment, `zerosearch replicate` the replication study, `zerosearch deploy` "
    "schedules them, `zerosearch ui` starts the MLflow UI.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _every_command() -> None:
    from zerosearch.tether import exit_on_termination_signals

    exit_on_termination_signals()  # SIGTERM / SIGHUP end a command as Ctrl-C does: servers stop


config_app = typer.Typer(help="Validate and show params files.", no_args_is_help=True)
world_app = typer.Typer(help="Peek at the generated tiny world.", no_args_is_help=True)
simulator_app = typer.Typer(help="Check the simulator LLM (served for the command, per params).", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(world_app, name="world")
app.add_typer(simulator_app, name="simulator")
console = Console()
err = Console(stderr=True)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Params file (a preset is a params file).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a key, e.g. --set data.world.n_entities=300 (repeatable)."),
]


def _config(params: Path, overrides: list[str] | None) -> Config:
    try:
        return load_config(params, overrides or [])
    except ConfigError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None


def _flow_session():
    """The context every flow runs in (flows/session.py): Prefect's temporary server dies with
    this command, and flow runs of killed commands end Crashed."""
    from flows.session import flow_session

    return flow_session()


def _print_stats(title: str, stats: dict) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in stats.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(table)


@app.command()
def data(params: ParamsOpt = Path("params.yaml"), set: SetOpt = None) -> None:
    """Data stage: generate the tiny world (or load hub/local datasets), write data/ and the BM25 index."""
    _config(params, set)
    from flows.data import data_flow

    with _flow_session():
        _print_stats("data stage", data_flow(str(params), set or []))


@app.command()
def base(params: ParamsOpt = Path("params.yaml"), set: SetOpt = None) -> None:
    """Base stage: train the tiny tokenizer, policy and simulator (or check hub models resolve)."""
    _config(params, set)
    from flows.base import base_flow

    with _flow_session():
        _print_stats("base stage", base_flow(str(params), set or []))


@app.command("simulator_sft")
def simulator_sft(params: ParamsOpt = Path("params.yaml"), set: SetOpt = None) -> None:
    """Simulator SFT stage: label base-policy searches useful/noisy, fine-tune the simulator."""
    _config(params, set)
    from flows.simulator_sft import simulator_sft_flow

    with _flow_session():
        _print_stats("simulator_sft stage", simulator_sft_flow(str(params), set or []))


app.command("sft", help="Alias of simulator_sft.")(simulator_sft)


@app.command()
def train(
    params: ParamsOpt = Path("params.yaml"),
    set: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in "
                                         "models/train_checkpoints (same config required).")] = False,
) -> None:
    """Train stage: RL (GRPO/PPO/REINFORCE++) against the simulated (or real) engine; writes models/policy."""
    _config(params, set)
    from flows.train import train_flow
    from zerosearch.search.probe import SimulatorProbeError

    try:
        with _flow_session():
            _print_stats("train stage", train_flow(str(params), set or [], resume=resume))
    except SimulatorProbeError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(1) from None
    except ValueError as e:
        if "cannot resume" not in str(e):
            raise
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None


@app.command("evaluate")
def evaluate(params: ParamsOpt = Path("params.yaml"), set: SetOpt = None) -> None:
    """Evaluate stage: every benchmark x method (direct, RAG, base agent, trained agent); writes metrics/evaluate.json."""
    cfg = _config(params, set)
    from flows.evaluate import evaluate_flow

    with _flow_session():
        result = evaluate_flow(str(params), set or [])
    console.print(f"\n[bold]EM[/bold] (engine {cfg.eval.engine})\n")
    console.print(result["markdown"], highlight=False)
    if result["registered_model"]:
        console.print(f"\nregistered: {result['registered_model']}")


app.command("eval", help="Alias of evaluate.")(evaluate)


def _load_agent(cfg: Config, policy: str | None, eng):
    """The agent ``ask`` and ``serve-agent`` use: policy ``policy`` (default ``eval.policy``; a
    ``models:/`` reference is resolved through the MLflow registry) over engine ``eng``, under
    the rollout settings ``evaluate`` uses. A policy that cannot load exits 2."""
    from zerosearch.agent.ask import Agent
    from zerosearch.agent.rollout import RolloutSettings

    ref = policy or cfg.eval.policy
    try:
        if ref.startswith("models:/"):
            from zerosearch.mlops.registry import resolve_policy

            ref = resolve_policy(ref)
        return Agent.load(ref, eng, RolloutSettings.from_config(cfg), trust_remote_code=cfg.base.trust_remote_code)
    except (OSError, FileNotFoundError) as e:
        err.print(f"[red]error:[/red] cannot load policy {policy or cfg.eval.policy!r}: {e}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question to answer.")],
    policy: Annotated[str | None, typer.Option(help="Policy: a directory, a hub id, or models:/<name>/<version> "
                                               "from the MLflow registry. Default: eval.policy.")] = None,
    engine: Annotated[str | None, typer.Option(help="bm25 | dense | web | simulated | hybrid. Default: eval.engine.")] = None,
    gold: Annotated[list[str] | None, typer.Option(help="Gold answer(s): only a simulated engine reads them.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer and trajectory as JSON.")] = False,
    params: ParamsOpt = Path("params.yaml"),
    set: SetOpt = None,
) -> None:
    """Ask the search agent a question; prints its searches, the documents and the answer."""
    cfg = _config(params, set)
    if not question.strip():
        err.print("[red]error:[/red] the question is empty", highlight=False)
        raise typer.Exit(2)
    from zerosearch.search.factory import open_engine

    with open_engine(cfg, engine or cfg.eval.engine) as eng:
        answer = _load_agent(cfg, policy, eng).ask(question, gold)
    if as_json:
        print(json.dumps(answer.to_dict(), indent=1))
        return
    styles = {"think": "dim", "search": "bold cyan", "information": "green", "answer": "bold magenta"}
    console.print(f"[bold]Q:[/bold] {question}", highlight=False)
    for step in answer.steps:
        console.print(f"[{styles[step['kind']]}]{step['kind']}[/]: {step['text']}", highlight=False)
    plural = "" if answer.searches == 1 else "es"
    console.print(f"[bold]=> {answer.answer or '(no answer)'}[/bold] after {answer.searches} search{plural}",
                  highlight=False)


@app.command("serve-agent")
def serve_agent(
    policy: Annotated[str | None, typer.Option(help="Policy: a directory, a hub id, or models:/<name>/<version> "
                                               "from the MLflow registry. Default: eval.policy.")] = None,
    engine: Annotated[str | None, typer.Option(help="bm25 | dense | web | simulated | hybrid. Default: eval.engine.")] = None,
    host: Annotated[str, typer.Option(help="Address the server binds; 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the server.")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Most questions answered in one batched rollout.")] = 16,
    max_wait_ms: Annotated[float, typer.Option(help="How long a batch waits for more questions after its first.")] = 20,
    max_queue: Annotated[int, typer.Option(help="Requests that may wait; one more gets 429.")] = 64,
    request_timeout: Annotated[float, typer.Option(help="Seconds before a request gets 504.")] = 600,
    params: ParamsOpt = Path("params.yaml"),
    set: SetOpt = None,
) -> None:
    """Serve the search agent behind an OpenAI-compatible /v1/chat/completions (and /health) until Ctrl-C.
    The reply's content is the final answer; the search trace is in its `zerosearch` field. Same
    prompt, chat template and limits as evaluate."""
    cfg = _config(params, set)
    from zerosearch.agent.server import create_app, serve
    from zerosearch.search.factory import open_engine

    name = policy or cfg.eval.policy
    with open_engine(cfg, engine or cfg.eval.engine) as eng:
        agent = _load_agent(cfg, policy, eng)
        app_ = create_app(agent, model_name=name, max_batch=max_batch, max_wait_ms=max_wait_ms,
                          max_queue=max_queue, request_timeout=request_timeout)
        console.print(f"agent [bold]{name}[/bold] (engine {engine or cfg.eval.engine}) at "
                      f"[bold]http://{host}:{port}/v1[/bold]; Ctrl-C to stop", highlight=False)
        try:
            serve(app_, host=host, port=port)  # uvicorn stops cleanly on Ctrl-C / SIGTERM, then re-raises it
        except KeyboardInterrupt:
            pass
        finally:
            console.print("stopped")


@app.command()
def serve(
    params: ParamsOpt = Path("params.yaml"),
    set: SetOpt = None,
    check: Annotated[bool, typer.Option("--check", help="Start, answer one sample query, stop.")] = False,
    host: Annotated[str, typer.Option(help="Address the server binds. 0.0.0.0 makes it reachable from other nodes "
                                           "(set simulator.backend=url and simulator.url=http://THIS_NODE:PORT/v1 "
                                           "there); the default keeps it on this machine.")] = "127.0.0.1",
) -> None:
    """Serve the simulator (transformers serve, sglang or vLLM, per simulator.backend) until Ctrl-C.
    With simulator.backend=inprocess (the CPU default) there is no server: pass
    --set simulator.backend=transformers to serve the same simulator."""
    cfg = _config(params, set)
    import dataclasses

    if cfg.simulator.backend == "inprocess":
        err.print("[red]error:[/red] simulator.backend is inprocess: training loads the simulator in its own "
                  "process, so there is nothing to serve. To serve it over HTTP (e.g. for another machine), "
                  "pass --set simulator.backend=transformers (or sglang / vllm).", highlight=False)
        raise typer.Exit(2)

    from zerosearch.search.factory import make_engine, server_spec
    from zerosearch.serving import ServerStartError, serve_simulator

    spec = dataclasses.replace(server_spec(cfg), host=host)
    try:
        with serve_simulator(spec, startup_timeout=cfg.simulator.startup_timeout) as url:
            console.print(f"simulator [bold]{spec.model}[/bold] ({spec.backend}) at [bold]{url}[/bold]")
            if check:
                engine = make_engine(cfg, "simulated", simulator_url=url)
                docs = engine.search(["Velora country"], questions=["In which country is Velora?"],
                                     answers=[["Zandoria"]], step=0)[0]
                console.print(f"check: {len(docs)} documents for a sample query")
                for d in docs:
                    console.print(f"  {d.render()}", highlight=False)
                if not docs:
                    raise typer.Exit(1)
                return
            console.print("Ctrl-C to stop")
            while True:
                time.sleep(3600)
    except ServerStartError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("stopped")


@simulator_app.command("probe")
def simulator_probe(
    params: ParamsOpt = Path("params.yaml"),
    set: SetOpt = None,
    n: Annotated[int | None, typer.Option("--n", help="Training questions to probe. Default: "
                                          "simulator.probe.n_questions.")] = None,
) -> None:
    """Ask the simulator for useful and for noisy documents on training questions (each question
    is its own query) and compare how often the outputs hold a gold answer; exit 1 when useful
    minus noisy is below simulator.probe.min_gap (the check the train stage runs first)."""
    cfg = _config(params, set)
    from zerosearch.data.schema import read_qa_parquet
    from zerosearch.search.client import SimulatorUnavailableError
    from zerosearch.search.factory import simulator_urls
    from zerosearch.search.probe import probe_from_config
    from zerosearch.search.templates import TemplateError
    from zerosearch.serving import ServerStartError

    train_file = cfg.path("data") / "train.parquet"
    if not train_file.exists():
        err.print(f"[red]error:[/red] no training questions at {train_file}: run `zerosearch data` first")
        raise typer.Exit(2)
    rows = read_qa_parquet(train_file)
    served = cfg.simulator.backend != "inprocess"  # inprocess: probe_from_config loads the simulator here
    try:
        with simulator_urls(cfg) if served else contextlib.nullcontext(None) as url:
            result = probe_from_config(cfg, url, rows, n_questions=n)
    except (ServerStartError, SimulatorUnavailableError, TemplateError) as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(1) from None
    table = Table(title=f"simulator probe: {result.model}, template {result.template}")
    for col in ("asked for", "outputs holding a gold answer"):
        table.add_column(col)
    table.add_row("useful", f"{result.useful_contains_gold_rate:.1%}")
    table.add_row("noisy", f"{result.noisy_contains_gold_rate:.1%}")
    table.add_row("gap (useful - noisy)", f"{result.gap:+.3f} (min_gap {result.min_gap})")
    table.add_row("malformed outputs", f"{result.malformed_rate:.1%}")
    console.print(table)
    console.print(f"{result.n_questions} training questions, 2 requests each")
    if not result.passed:
        err.print(f"[red]error:[/red] {result.failure_message()}", highlight=False)
        raise typer.Exit(1)
    console.print("[green]ok[/green]: the useful/noisy switch works")


@app.command()
def pipeline(force: Annotated[bool, typer.Option(help="Rerun stages even if up to date.")] = False) -> None:
    """Run the whole pipeline on params.yaml with DVC (`dvc repro`): only stale stages run."""
    _config(Path("params.yaml"), None)
    if shutil.which("dvc") is None:
        err.print("[red]error:[/red] dvc is not on PATH; install the project (make install)")
        raise typer.Exit(2)
    raise typer.Exit(subprocess.call(["dvc", "repro", *(["--force"] if force else [])]))


@app.command()
def experiment(
    preset: Annotated[str, typer.Option(help="params.yaml, a preset name under configs/ (tiny, "
                                             "paper/grpo-qwen2.5-3b-sft, ...) or a path.")] = "params.yaml",
    set: SetOpt = None,
    name: Annotated[str | None, typer.Option(help="Experiment name (default run-<UTC time>).")] = None,
    workspace: Annotated[bool, typer.Option(help="Run in the workspace instead of a temp copy.")] = False,
) -> None:
    """Run the pipeline as a DVC experiment (`dvc exp run`) through the Prefect `pipeline` flow:
    the same thing a UI-triggered or scheduled run does. Compare with `dvc exp show`."""
    from flows.pipeline import pipeline_flow
    from zerosearch.mlops.experiments import ExperimentFailed
    from zerosearch.mlops.tracking import tracking_uri

    try:
        with _flow_session():
            out = pipeline_flow(preset, set or [], name, temp=not workspace)
    except (ConfigError, ExperimentFailed) as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"experiment [bold]{out['experiment']}[/bold]: ran {out['ran'] or 'nothing'}; "
                  f"registered {out['registered_model'] or '-'}")
    for run in out["mlflow_runs"]:
        console.print(f"  MLflow {run['stage']}: {run['url']}")
    if out["mlflow_runs"] and not tracking_uri().startswith(("http://", "https://")):
        console.print("  (the runs are in mlflow.db; the links open while `zerosearch ui` or `make mlflow-ui` runs)")


REPLICATE_HELP = """Run the replication study (configs/studies/replication.yaml) and write its report.

Every variant x seed of the selected claims is a DVC experiment `rep-<variant>-b<base seed>-s<RL seed>`
(`dvc exp run --temp`, one at a time). Resumable: finished experiments (ref with metrics/evaluate.json and
its predictions) are skipped, an interrupted one is rerun, a failed one is reported and the study goes on.
Base models and simulators are shared through DVC's run cache (once per base seed / simulator config).
Then writes metrics/replication.json, docs/REPLICATION.md, metrics/replication_plots/claim<k>.png and an
MLflow `replication` run. Claims: 1 simulator vs real engine, 2 curriculum vs fixed noise, 3 state masking,
4 RL algorithms, 5 baselines. Exit 1 when an experiment failed."""


@app.command(help=REPLICATE_HELP)
def replicate(
    claims: Annotated[str | None, typer.Option(help="Claims to run, e.g. 1,2 (default: all).")] = None,
    seeds: Annotated[int | None, typer.Option(help="RL seeds (train.seed 0..N-1) per variant (default: the study's, 3).")] = None,
    base_seeds: Annotated[int | None, typer.Option(help="Base seeds (base.seed 0..N-1) of the claims that vary them "
                                                        "(1, 2, 5; default: the study's, 3).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the plan, its size and the estimated time; run nothing.")] = False,
    report_only: Annotated[bool, typer.Option(help="Only (re)write the report from the finished experiments.")] = False,
    study_file: Annotated[Path, typer.Option("--study", help="The study file.")] = Path("configs/studies/replication.yaml"),
) -> None:
    from zerosearch.mlops.study import counts, load_study, parse_claims, plan

    try:
        study = load_study(study_file).select(parse_claims(claims), seeds, base_seeds)
    except ConfigError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    experiments = plan(study)
    if dry_run:
        _print_replication_plan(study, experiments)
        return
    cfg = _config(Path("params.yaml"), None)
    if report_only:
        from zerosearch.mlops.replication import DvcStore
        from zerosearch.mlops.replication_report import build_report, publish

        report, paths = build_report(study, experiments, DvcStore(".", cfg.base.paths.metrics))
        publish(report, paths, cfg)
        for c in report["claims"]:
            console.print(f"claim {c['id']} ({c['title']}): [bold]{c['verdict']}[/bold]")
        console.print(f"{report['experiments']['finished']} of {len(experiments)} experiments finished; wrote "
                      + ", ".join(str(p) for p in paths if p.suffix != ".png") + " and the charts")
        return
    from flows.replicate import replicate_flow

    try:
        with _flow_session():
            out = replicate_flow([c.id for c in study.claims], study.rl_seeds, study.base_seeds,
                                 study_file=str(study_file))
    except ConfigError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    console.print(f"ran {len(out['ran'])}, skipped {len(out['skipped'])} finished, failed {len(out['failed'])}; "
                  f"counts per variant: {counts(experiments)}")
    for c in out["report"]["claims"]:
        console.print(f"claim {c['id']} ({c['title']}): [bold]{c['verdict']}[/bold]")
    for name, why in out["failed"].items():
        err.print(f"[red]failed:[/red] {name}: {why.splitlines()[0]}", highlight=False)
    raise typer.Exit(1 if out["failed"] else 0)


def _print_replication_plan(study, experiments) -> None:
    from zerosearch.mlops.replication import (
        check_plan,
        estimate,
        measured_seconds,
        scratch_pretrain_seconds,
    )
    from zerosearch.mlops.study import counts

    table = Table(title=f"replication plan: {len(experiments)} experiments")
    for col in ("claim", "rows (variants)", "seeds that vary"):
        table.add_column(col)
    for c in study.claims:
        base, rl = study.seeds(c, c.rows[0].variant)
        table.add_row(f"{c.id}. {c.title}", ", ".join(r.id for r in c.rows),
                      ", ".join(f"{k} {len(base) if k == 'base' else len(rl)}" for k in c.vary) or "none")
    console.print(table)
    per = Table(title="experiments per variant (shared variants counted once)")
    per.add_column("variant")
    per.add_column("experiments", justify="right")
    for variant, n in counts(experiments).items():
        per.add_row(variant, str(n))
    console.print(per)
    cfg = _config(Path("params.yaml"), None)
    measured = measured_seconds(cfg.path("metrics"))
    measured["scratch_pretrain"] = scratch_pretrain_seconds(cfg, measured.get("base", 0.0))
    est = estimate(experiments, measured, cfg.base.seed)
    if not est["complete"]:
        console.print("estimate: incomplete (no metrics/train.json or validation times yet: run `make run` first)")
    parts = ", ".join(f"{k} {v / 3600:.1f} h" for k, v in est["parts"].items())
    console.print(f"estimated time: [bold]{est['seconds'] / 3600:.1f} h[/bold] ({parts}; {est['new_base_seeds']} new "
                  f"base seed(s), {est['simulator_sft_runs']} simulator SFT run(s)), from the stage times of the "
                  f"workspace's last run on {est['hardware']}")
    for variant, why in check_plan(experiments).items():
        err.print(f"[yellow]variant {variant} does not validate:[/yellow] {why}", highlight=False)


@app.command()
def deploy(
    params: ParamsOpt = Path("params.yaml"),
    set: SetOpt = None,
) -> None:
    """Serve the pipeline flow as a Prefect deployment with the cron schedule of
    `orchestration` in the params (scheduled retraining) and ad-hoc runs from the Prefect UI.
    Needs a Prefect server: `prefect server start`, then PREFECT_API_URL=http://127.0.0.1:4200/api."""
    from flows.deploy import serve

    cfg = _config(params, set)
    o = cfg.orchestration
    console.print(f"serving deployment [bold]pipeline/{o.deployment}[/bold], schedule "
                  f"{o.cron or 'none'} ({o.timezone}); Ctrl-C stops it")
    serve(cfg)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port of the MLflow server.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
) -> None:
    """Start the MLflow tracking server and UI over ./mlflow.db (one writer for every process).
    Then log to it: export MLFLOW_TRACKING_URI=http://127.0.0.1:5000 (the Prefect UI is
    `prefect server start`, port 4200)."""
    from zerosearch.mlops.server import mlflow_server_command

    cmd = mlflow_server_command(Path("."), host, port)
    console.print(f"MLflow UI on http://{host}:{port}  (export MLFLOW_TRACKING_URI=http://{host}:{port})")
    raise typer.Exit(subprocess.call(cmd))


@config_app.command("validate")
def config_validate(files: Annotated[list[Path], typer.Argument(help="Params files to check.")]) -> None:
    """Check params files against the schema; exit 2 naming each bad key."""
    bad = 0
    for f in files:
        try:
            load_config(f)
            console.print(f"[green]ok[/green] {f}")
        except ConfigError as e:
            err.print(f"[red]error:[/red] {e}", highlight=False)
            bad += 1
    raise typer.Exit(2 if bad else 0)


@config_app.command("show")
def config_show(params: ParamsOpt = Path("params.yaml"), set: SetOpt = None) -> None:
    """Print the resolved, validated config (``extends`` applied, then overrides) as YAML.
    Redirect it to make a complete params file: `zerosearch config show -p configs/paper/X.yaml > params.yaml`."""
    typer.echo(yaml.safe_dump(_config(params, set).model_dump(), sort_keys=False), nl=False)


@world_app.command("show")
def world_show(
    params: ParamsOpt = Path("params.yaml"),
    n: Annotated[int, typer.Option(help="Entities and questions to show.")] = 3,
    entity: Annotated[str | None, typer.Option(help="Show this entity (by name) and its documents.")] = None,
    seed: Annotated[int, typer.Option(help="Which random sample to show.")] = 0,
) -> None:
    """Show a sample of the world: entities, their documents and questions per split."""
    from zerosearch.data.schema import read_corpus, read_qa_parquet
    from zerosearch.data.tinyworld import load_world

    cfg = _config(params, None)
    data_dir = cfg.path("data")
    if not (data_dir / "world.json").exists():
        err.print(f"[red]error:[/red] no world at {data_dir}/world.json: run `zerosearch data` first")
        raise typer.Exit(2)
    world, roles = load_world(data_dir)
    docs_by_entity: dict[str, list[dict]] = {}
    for d in read_corpus(data_dir / "corpus.jsonl"):
        docs_by_entity.setdefault(d.get("entity", ""), []).append(d)
    rng = random.Random(seed)
    picked = [e for e in world.entities if e.name == entity] if entity else rng.sample(world.entities, n)
    if not picked:
        err.print(f"[red]error:[/red] no entity named {entity!r}")
        raise typer.Exit(2)
    for e in picked:
        console.print(f"[bold]{e.name}[/bold] ({e.type}, {roles[e.id]}) aliases={e.aliases}")
        console.print("  attrs: " + json.dumps({k: world.by_id[v].name if v in world.by_id else v
                                                 for k, v in e.attrs.items()}), highlight=False)
        for d in docs_by_entity.get(e.id, []):
            console.print(f"  [dim]doc[/dim] ({d['title']}) {d['text']}", highlight=False)
    for f in sorted(data_dir.glob("*.parquet")) + sorted((data_dir / "test").glob("*.parquet")):
        rows = read_qa_parquet(f)
        console.print(f"\n[bold]{f.stem}[/bold] ({len(rows)} questions)")
        for r in rng.sample(rows, min(n, len(rows))):
            console.print(f"  {r['question']}  ->  {r['golden_answers']}", highlight=False)


def main() -> None:
    """The ``zerosearch`` command: an ``InputError`` (a bad key, row or file, a server that does
    not start) is one line on stderr and exit code 2; anything else keeps its traceback."""
    from zerosearch.errors import InputError

    try:
        app()
    except InputError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)  # a long path stays on its line
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
