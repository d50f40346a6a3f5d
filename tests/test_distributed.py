"""Data parallel on CPUs: `torchrun --nproc_per_node 2` runs of the train stage and of the
simulator serving, each process recording what it did (tests/distributed_run.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests.conftest import REPO
from zerosearch.rl.launch import check_launch

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
DRIVER = str(REPO / "tests" / "distributed_run.py")
TIMEOUT = 600  # a hang fails the test instead of the suite


def launch(nproc: int | None, *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """tests/distributed_run.py under torchrun with ``nproc`` processes (None: plain python, one
    process); its records, one per process, in process order."""
    out = Path(args[args.index("--out") + 1])
    cmd = [*TORCHRUN, "--nproc_per_node", str(nproc), DRIVER] if nproc else [sys.executable, DRIVER]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([*cmd, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)
    records = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    return done, records


def test_a_launch_accelerate_sees_as_one_process_is_refused(capsys):
    one = types.SimpleNamespace(num_processes=1, process_index=0, distributed_type="NO", device="cpu")
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2 in the environment but accelerate sees 1 process"):
        check_launch(one, {"WORLD_SIZE": "2"})
    check_launch(one, {})
    two = types.SimpleNamespace(num_processes=2, process_index=1, distributed_type="MULTI_CPU", device="cpu")
    check_launch(two, {"WORLD_SIZE": "2"})
    assert "process 1 of 2, distributed type MULTI_CPU" in capsys.readouterr().out


def test_only_the_main_process_serves_the_simulator_the_others_use_its_url(tmp_path):
    """A8: one server for two processes (not one each on a fixed port), on the GPUs the params
    name; it answers before either process builds its engine and stops after both are done."""
    done, records = launch(2, "serve", "--root", str(tmp_path), "--out", str(tmp_path / "out"),
                           "--set", "simulator.cuda_visible_devices=7")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["rank"] for r in records] == [0, 1] and all(r["num_processes"] == 2 for r in records)
    assert records[0]["urls"] == records[1]["urls"] and all(r["healthy"] for r in records)
    starts = (tmp_path / "models" / "simulator_server.log").read_text().count("fake server pid")
    assert starts == 1
    assert json.loads((tmp_path / "out" / "server_env.json").read_text()) == {"CUDA_VISIBLE_DEVICES": "7"}
    assert not records[0]["healthy_after"]  # the main process stopped it


@pytest.mark.slow
def test_a_simulator_that_fails_to_start_fails_every_process_without_a_hang(tmp_path):
    done, records = launch(2, "serve", "--root", str(tmp_path), "--out", str(tmp_path / "out"),
                           "--server-mode", "exit")
    assert done.returncode != 0 and not records
    assert "[rank1]: zerosearch.serving.ServerStartError: the main process could not serve the simulator" in done.stderr


@pytest.mark.slow
def test_with_the_inprocess_simulator_every_process_loads_its_own_and_a_failed_probe_stops_all(micro_world,
                                                                                               tmp_path):
    """No server: each process its own simulator, its RNG seeded with its rank too (the same
    call seed writes different documents on the two processes); the main process probes it
    and a failed probe fails both, without a hang."""
    ok = ["simulator.probe.min_gap=0.0"]
    done, records = launch(2, "inprocess", "--root", str(micro_world), "--out", str(tmp_path / "ok"), "--set", *ok)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r.get("completer_rank") for r in records] == [0, 1], records
    assert records[0]["texts"] != records[1]["texts"]
    fail = ["simulator.probe.min_gap=1.0"]  # the untrained simulator cannot pass it
    done, records = launch(2, "inprocess", "--root", str(micro_world), "--out", str(tmp_path / "fail"), "--set", *fail)
    assert done.returncode == 0, done.stderr[-3000:]
    assert records[0]["error"].startswith("SimulatorProbeError: simulator probe failed")
    assert records[1]["error"].startswith("SimulatorProbeError: the main process's simulator probe failed")


TRAIN = ["train.engine=bm25", "train.total_steps=4", "train.save_every=3", "train.lr=0.001",
         "train.warmup_ratio=0.9",  # warmup ceil(3.6) = 4 steps: the LR differs after every step
         "train.kl_coef=0.01", "train.batch_prompts=4", "train.group_size=2", "train.mini_batch_size=4",
         "train.micro_batch_size=1", "train.ppo_epochs=2", "train.max_turns=1", "train.max_response_tokens=16"]


@pytest.mark.slow
def test_two_processes_train_their_shares_step_like_one_process_and_resume(micro_world, tmp_path):
    """The train stage under `torchrun --nproc_per_node 2` on CPUs (MULTI_CPU over gloo), 3 steps
    then interrupted, then `--resume` under 2 processes; against the same config in one process.
    Process 1's rollouts of step 1 carry no sampled token (all its micro-batches weigh 0)."""
    def run(name: str, nproc: int | None, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
        sets = [*TRAIN, f"base.paths.models={tmp_path}/{name}/models", f"base.paths.metrics={tmp_path}/{name}/metrics"]
        return launch(nproc, "train", "--root", str(micro_world), "--out", str(tmp_path / name / extra[0]),
                      *extra[1:], "--set", *sets)

    done, (r0, r1) = run("two", 2, "first", "--stop-after", "3", "--zero-rank", "1", "--zero-step", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process 0 of 2, distributed type DistributedType.MULTI_CPU" in done.stdout
    assert "process 1 of 2, distributed type DistributedType.MULTI_CPU" in done.stdout
    done, (r0b, r1b) = run("two", 2, "resumed", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    done, (one,) = run("one", None, "out")
    assert done.returncode == 0, done.stderr[-3000:]
    assert one["num_processes"] == 1 and r0["num_processes"] == r1["num_processes"] == 2

    models = tmp_path / "two" / "models"
    # one checkpoint after 3 steps; the resumed run starts there on both processes and finishes
    assert not r0["finished"] and r0b["finished"] and r0b["start_step"] == r1b["start_step"] == 3
    assert sorted(p.name for p in (models / "train_checkpoints").iterdir()) == ["step_000003", "step_000004"]
    assert (models / "policy" / "model.safetensors").exists()
    assert [h["step"] for h in r0b["history"]] == [0, 1, 2, 3] and r0b["history"][:3] == r0["history"]
    # only the main process writes the stage's outputs
    assert r1["writes"] == r1b["writes"] == [] and "save_checkpoint" in r0["writes"] and "save_model" in r0b["writes"]

    steps = {**r0["steps"], **r0b["steps"]}, {**r1["steps"], **r1b["steps"]}
    for s in map(str, range(4)):
        mine = [steps[r][s] for r in (0, 1)]
        # each process rolls out its half of the step's prompts, whole groups (2 rollouts each)
        halves = [sorted(set(e["questions"])) for e in mine]
        assert not set(halves[0]) & set(halves[1])
        assert sorted(halves[0] + halves[1]) == sorted(set(one["steps"][s]["questions"]))
        for e in mine:
            assert len(e["questions"]) == 4 and e["groups"] == [0, 0, 1, 1]
            assert all(e["questions"].count(q) == 2 for q in e["questions"])
        # the design on every process: 2 epochs x 2 mini-batches = 4 optimizer steps, one LR step
        # per training step, gradients synced on each mini-batch's last micro-batch only
        for e in (*mine, one["steps"][s]):
            assert e["optimizer_steps"] == 4 and e["scheduler_count"] == int(s) + 1
        assert mine[0]["syncs"] == mine[1]["syncs"] == [False, True] * 4  # 2 micro-batches per local mini-batch
        assert one["steps"][s]["syncs"] == [False, False, False, True] * 4
        assert mine[0]["lr"] == mine[1]["lr"] == one["steps"][s]["lr"] == pytest.approx(1e-3 * min(1, (int(s) + 2) / 4))
    # the zero-weight micro-batches of process 1 at step 1 still ran forward and backward
    zero = steps[1]["1"]["backward_losses"]
    assert len(zero) == len(steps[0]["1"]["backward_losses"]) == 8 and all(x == 0.0 for x in zero)
    assert any(x != 0.0 for x in steps[0]["1"]["backward_losses"])

    # validation (the params' val_every over 4 steps: after 0 and 4 updates): each process
    # answers half of the questions, gathered; the base policy's (step 0) equals one process's
    import csv

    def validations(name: str) -> list[dict]:
        with open(tmp_path / name / "metrics" / "train_validation.csv", encoding="utf-8") as f:
            return [{k: v for k, v in r.items() if k != "val_seconds"} for r in csv.DictReader(f)]

    two, single = validations("two"), validations("one")
    assert [r["step"] for r in two] == [r["step"] for r in single] == ["0", "4"]
    assert two[0] == single[0] and {"val_em", "val_tiny_ood_substring_em"} <= set(two[0])

    # logged metrics are over both processes, the same on each
    history = r0b["history"]
    assert history == r1b["history"]
    curve = (tmp_path / "two" / "metrics" / "train_curve.csv").read_text().splitlines()
    assert len(curve) == 5
    for h in history:
        e = [steps[r][str(h["step"])] for r in (0, 1)]
        rewards = e[0]["local_rewards"] + e[1]["local_rewards"]
        assert h["reward_mean"] == pytest.approx(sum(rewards) / len(rewards))
        assert h["response_tokens"] == pytest.approx((e[0]["local_stats"]["response_tokens"]
                                                      + e[1]["local_stats"]["response_tokens"]) / 2)
        assert h["context_limit_stops"] == e[0]["local_stats"]["context_limit_stops"] + \
            e[1]["local_stats"]["context_limit_stops"]
        for key in ("entropy", "policy_loss", "kl"):  # each process's token share of the mini-batch losses
            assert h[key] == pytest.approx(e[0]["local_update"][key] + e[1]["local_update"][key], rel=1e-6)


@pytest.mark.slow
def test_two_processes_split_a_remainder_mini_batch_alike(micro_world, tmp_path):
    """mini_batch_size 6 of 8 rollouts (as the paper's 256 of 320): each process trains on 3 + 1 of its 4,
    so both run the same micro-batches (no collective waits) and step twice, syncing on each last one."""
    sets = [*TRAIN, "train.total_steps=1", "train.save_every=1", "train.ppo_epochs=1", "train.mini_batch_size=6",
            f"base.paths.models={tmp_path}/models", f"base.paths.metrics={tmp_path}/metrics"]
    done, records = launch(2, "train", "--root", str(micro_world), "--out", str(tmp_path / "out"), "--set", *sets)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["rank"] for r in records] == [0, 1]
    for r in records:
        assert r["steps"]["0"]["optimizer_steps"] == 2 and r["steps"]["0"]["syncs"] == [False, False, True, True]
