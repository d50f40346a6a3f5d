import yaml
from typer.testing import CliRunner

from tests.conftest import REPO, micro_overrides
from zerosearch.cli import app
from zerosearch.config import load_config
from zerosearch.stages import data as data_stage


def micro_params_file(tmp_path):
    """A params file on disk with the micro overrides applied (for commands without --set)."""
    cfg = load_config(REPO / "params.yaml", micro_overrides(tmp_path))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return path, cfg


def test_help_lists_stages():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("data", "base", "simulator_sft", "train", "evaluate", "pipeline", "config", "world"):
        assert cmd in result.output
    # the stage commands carry the stage names; sft and eval are aliases
    for cmd in ("data", "base", "simulator_sft", "sft", "evaluate", "eval"):
        sub = CliRunner().invoke(app, [cmd, "--help"])
        assert sub.exit_code == 0 and "--params" in sub.output and "--set" in sub.output, cmd


def test_world_show_prints_entities_docs_and_questions(tmp_path):
    params, cfg = micro_params_file(tmp_path)
    data_stage.run(cfg)
    result = CliRunner().invoke(app, ["world", "show", "--params", str(params), "--n", "2"])
    assert result.exit_code == 0, result.output
    assert "doc" in result.output and "train (150 questions)" in result.output
    assert "tiny_ood (30 questions)" in result.output
    from zerosearch.data.tinyworld import load_world

    world, _ = load_world(cfg.path("data"))
    name = world.of_type("city")[0].name
    one = CliRunner().invoke(app, ["world", "show", "--params", str(params), "--entity", name])
    assert one.exit_code == 0 and name in one.output and "(city, " in one.output
    missing = CliRunner().invoke(app, ["world", "show", "--params", str(params), "--entity", "Nobody"])
    assert missing.exit_code == 2


def test_world_show_without_data_is_a_clear_error(tmp_path):
    params, _ = micro_params_file(tmp_path)
    result = CliRunner().invoke(app, ["world", "show", "--params", str(params)])
    assert result.exit_code == 2 and "run `zerosearch data` first" in result.output


def test_config_show_applies_overrides():
    result = CliRunner().invoke(app, ["config", "show", "--params", str(REPO / "params.yaml"),
                                      "--set", "train.algorithm=ppo"])
    assert result.exit_code == 0 and yaml.safe_load(result.output)["train"]["algorithm"] == "ppo"


def test_serve_binds_the_host_given(tmp_path, monkeypatch):
    import contextlib

    from zerosearch import serving

    params, _ = micro_params_file(tmp_path)
    specs = []

    @contextlib.contextmanager
    def fake_serve(spec, startup_timeout):
        specs.append(spec)
        yield f"http://{spec.host}:6001/v1"

    def stop(_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(serving, "serve_simulator", fake_serve)
    monkeypatch.setattr("zerosearch.cli.time.sleep", stop)
    served = ["--set", "simulator.backend=transformers"]  # the tiny default, inprocess, has nothing to serve
    result = CliRunner().invoke(app, ["serve", "--params", str(params), *served, "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert [s.host for s in specs] == ["0.0.0.0"] and "http://0.0.0.0:6001/v1" in result.output
    CliRunner().invoke(app, ["serve", "--params", str(params), *served])
    assert specs[-1].host == "127.0.0.1"


def test_importing_the_flows_turns_prefect_server_telemetry_off_unless_set():
    import os
    import subprocess
    import sys

    code = "import flows, os; print(os.environ['PREFECT_SERVER_ANALYTICS_ENABLED'])"

    def value(**env):
        base = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_ANALYTICS_ENABLED"}
        out = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, env={**base, **env}, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert value() == "false"
    assert value(PREFECT_SERVER_ANALYTICS_ENABLED="true") == "true"


def test_experiment_prints_its_mlflow_runs_and_how_to_open_them(monkeypatch, tmp_path):
    import flows.pipeline

    out = {"experiment": "exp-1", "ran": ["train"], "registered_model": "models:/zerosearch-policy/3",
           "mlflow_runs": [{"stage": "train", "run_id": "abc", "url": "http://127.0.0.1:5000/#/experiments/1/runs/abc"}]}
    calls = []
    monkeypatch.setattr(flows.pipeline, "pipeline_flow", lambda *a, **k: calls.append((a, k)) or out)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, ["experiment", "--set", "train.lr=1e-4", "--name", "exp-1"])
    assert result.exit_code == 0, result.output
    assert calls == [(("params.yaml", ["train.lr=1e-4"], "exp-1"), {"temp": True})]
    assert "experiment exp-1: ran ['train']; registered models:/zerosearch-policy/3" in result.output
    assert "MLflow train: http://127.0.0.1:5000/#/experiments/1/runs/abc" in result.output
    assert "zerosearch ui" in result.output  # no server configured: say how to open the links

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    result = CliRunner().invoke(app, ["experiment", "--name", "exp-1"])
    assert "zerosearch ui" not in result.output
