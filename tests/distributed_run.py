"""What one process of a launched run did, for tests/test_distributed.py (not a test itself).

    torchrun --standalone --nproc_per_node 2 tests/distributed_run.py train --root R --out O [...]
    torchrun --standalone --nproc_per_node 2 tests/distributed_run.py serve --root R --out O

``train``: the train stage (``zerosearch.stages.train.run``) on the micro world under ``R``,
instrumented: per step, the questions this process rolled out, its optimizer steps, its
backward passes (loss value, sync_gradients), its LR scheduler's count and LR, its local
rewards, rollout statistics and update statistics; which process wrote which output. ``--zero-rank/--zero-step``: that process's
rollouts of that step get an all-zero loss mask (every micro-batch of its update has weight 0).
``--stop-after N``: the run stops (as if interrupted) right after the checkpoint of step N.
``serve``: ``shared_engine`` with the simulated engine over ``tests/fake_server.py`` (``--server-mode
exit``: a server that fails to start): the URL each process got. ``inprocess``: ``shared_engine``
with ``simulator.backend: inprocess`` on the micro world's base simulator, probed on the training
questions: the completer's rank, what it writes for a fixed call seed, or the error. Each
process writes ``O/rank<i>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import micro_config  # sets HF_HUB_OFFLINE, tracking off
from zerosearch.rl import launch
from zerosearch.rl import trainer as trainer_module
from zerosearch.stages import train as train_stage


class Stopped(Exception):
    """The simulated interruption of --stop-after."""


def instrument(record: dict, args) -> None:
    """Wrap the trainer's methods and the stage's writers to fill ``record``."""
    cls, state = trainer_module.RLTrainer, {}

    def step_entry() -> dict:
        return record["steps"].setdefault(str(state["step"]), {"optimizer_steps": 0, "backward_losses": [],
                                                               "syncs": []})

    def setup(self, resume=False):
        out = real["setup"](self, resume)
        record.update(rank=self.accelerator.process_index, num_processes=self.accelerator.num_processes,
                      distributed_type=str(self.accelerator.distributed_type), start_step=out)
        self.m.optimizer.optimizer.register_step_post_hook(lambda *_: step_entry().__setitem__(
            "optimizer_steps", step_entry()["optimizer_steps"] + 1))
        acc, backward = self.accelerator, self.accelerator.backward

        def counting_backward(loss, **kw):
            step_entry()["backward_losses"].append(float(loss.detach()))
            step_entry()["syncs"].append(acc.sync_gradients)
            return backward(loss, **kw)

        acc.backward = counting_backward
        state["trainer"] = self
        return out

    def train_step(self, step):
        state["step"] = step
        metrics = real["train_step"](self, step)
        step_entry().update(lr=self.m.scheduler.get_last_lr()[0], scheduler_count=self.m.scheduler.last_epoch)
        return metrics

    def rollout(self, step):
        batch, group = real["rollout"](self, step)
        step_entry().update(questions=[tr.question for tr in batch.trajectories], groups=group,
                            local_stats=batch.stats())
        return batch, group

    def update(self, exp, step):
        out = real["update"](self, exp, step)
        step_entry()["local_update"] = dict(out)
        return out

    def scores(self, batch):
        out = real["scores"](self, batch)
        step_entry()["local_rewards"] = out.tolist()
        return out

    def make_experience(self, batch, scores, group):
        exp = real["make_experience"](self, batch, scores, group)
        if self.accelerator.process_index == args.zero_rank and state["step"] == args.zero_step:
            exp.mask.zero_()
        return exp

    def save(self, step):
        out = real["save"](self, step)
        if step == args.stop_after:
            raise Stopped
        return out

    wrappers = {"setup": setup, "train_step": train_step, "rollout": rollout, "update": update, "scores": scores,
                "make_experience": make_experience, "save": save}
    real = {name: getattr(cls, name) for name in wrappers}
    for name, fn in wrappers.items():
        setattr(cls, name, fn)

    def writer(module, name):
        fn = getattr(module, name)

        def wrapped(*a, **kw):
            record["writes"].append(name)
            return fn(*a, **kw)

        setattr(module, name, wrapped)

    writer(train_stage, "write_csv")
    writer(train_stage, "save_model")
    writer(trainer_module, "save_checkpoint")
    record["state"] = state


def train(args) -> dict:
    record: dict = {"steps": {}, "writes": []}
    instrument(record, args)
    cfg = micro_config(Path(args.root), *args.set)
    try:
        train_stage.run(cfg, resume=args.resume)
        record["finished"] = True
    except Stopped:
        record["finished"] = False
    record["history"] = record.pop("state")["trainer"].history
    return record


def serve(args) -> dict:
    from zerosearch.search import factory

    real = factory.server_spec
    env_file = Path(args.out) / "server_env.json"
    env_file.parent.mkdir(parents=True, exist_ok=True)
    factory.server_spec = lambda cfg: dataclasses.replace(
        real(cfg), command=(sys.executable, str(REPO / "tests/fake_server.py"), "--port", "{port}",
                            "--env-file", str(env_file), "--mode", args.server_mode))
    cfg = micro_config(Path(args.root), "train.engine=simulated", "simulator.backend=transformers",
                       "simulator.server_args=[]", *args.set)
    accelerator = launch.build_accelerator(cfg.train)
    from zerosearch.serving import health_ok

    log = cfg.path("models") / "simulator_server.log"
    with train_stage.shared_engine(cfg, accelerator, log_path=log) as engine:
        urls = engine.completer.base_urls
        record = {"rank": accelerator.process_index, "num_processes": accelerator.num_processes,
                  "urls": urls, "healthy": health_ok(urls[0])}
    record["healthy_after"] = health_ok(urls[0])
    return record


def inprocess(args) -> dict:
    from zerosearch.data.schema import read_qa_parquet

    cfg = micro_config(Path(args.root), "train.engine=simulated", "simulator.backend=inprocess",
                       "simulator_sft.enabled=false", "simulator.max_tokens=16", "simulator.probe.n_questions=4",
                       *args.set)
    accelerator = launch.build_accelerator(cfg.train)
    record = {"rank": accelerator.process_index}
    rows = read_qa_parquet(cfg.path("data") / "train.parquet")
    try:
        with train_stage.shared_engine(cfg, accelerator, log_path=cfg.path("models") / "unused.log",
                                       rows=rows) as engine:
            record["completer_rank"] = engine.completer.rank
            record["texts"] = engine.completer.complete(["Doc 1:", "Query: velora"], max_tokens=16,
                                                        temperature=1.0, seed=5)
    except Exception as err:  # noqa: BLE001 (the record names it; the test checks which)
        record["error"] = f"{type(err).__name__}: {err}"
    return record


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["train", "serve", "inprocess"])
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--stop-after", type=int, default=-1)
    ap.add_argument("--zero-rank", type=int, default=-1)
    ap.add_argument("--zero-step", type=int, default=-1)
    ap.add_argument("--server-mode", default="ok", help="serve: the fake server's --mode")
    args = ap.parse_args()
    record = {"train": train, "serve": serve, "inprocess": inprocess}[args.mode](args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"rank{record['rank']}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
