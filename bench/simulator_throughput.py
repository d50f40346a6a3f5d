"""Bench: simulator requests/s, in process against served, on the same prompts.

Sends N simulator prompts (held-out SFT queries, half asking for useful and half for noisy
documents) to the params' simulator three ways, in this one process:

(a) served (the baseline): ``transformers serve`` started by ``zerosearch.serving`` with the
    params' server arguments (continuous batching), N concurrent requests through
    ``SimulatorClient`` (``simulator.concurrency`` in flight), one seed per request;
(b) in process, ``simulator.backend: inprocess``: ``InProcessCompleter`` (the policy's
    ``HFGenerator`` decode loop, its own seeded RNG), all N prompts in one call, as the
    simulated engine sends one search call's queries;
(c) optional (``--one-at-a-time``): ``model.generate`` one request at a time (``LocalCompleter``).

Same model, prompts, max_tokens and temperature; each is warmed up on two prompts first.
Ratios are against (a).

    python bench/simulator_throughput.py [--params params.yaml] [--set k=v ...] [--n 110]

The default N is about one training step's searches in the tiny world (12 x 5 rollouts,
up to 2 searches each).
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from zerosearch.config import load_config
from zerosearch.lm.models import load_model
from zerosearch.search.client import SimulatorClient
from zerosearch.search.factory import server_spec
from zerosearch.search.local import InProcessCompleter, LocalCompleter
from zerosearch.search.simulated import sft_prompt
from zerosearch.serving import serve_simulator
from zerosearch.stages.simulator_sft import load_heldout


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], help="a params override, e.g. base.paths.models=/x")
    ap.add_argument("--n", type=int, default=110, help="requests per mode")
    ap.add_argument("--one-at-a-time", action="store_true", help="also time model.generate, one request at a time")
    args = ap.parse_args()
    cfg = load_config(args.params, [*args.set, "simulator.backend=transformers"])
    pairs = (load_heldout(cfg.served_simulator()) * 50)[: args.n]
    prompts = [sft_prompt(p["query"], p["question"], p["golden_answers"][0], i % 2 == 1) for i, p in enumerate(pairs)]
    sampling = {"max_tokens": cfg.simulator.max_tokens, "temperature": cfg.simulator.temperature,
                "top_p": cfg.simulator.top_p}
    rows = []

    with serve_simulator(server_spec(cfg), startup_timeout=cfg.simulator.startup_timeout) as url:
        client = SimulatorClient(url, model=cfg.served_simulator(), concurrency=cfg.simulator.concurrency,
                                 timeout=cfg.simulator.request_timeout)
        client.complete(prompts[:2], **sampling, seed=1)  # warm-up (the first request allocates the cache)
        served_s, out = timed(lambda: client.complete(prompts, **sampling, seed=0))
        rows.append((f"served: transformers serve, {cfg.simulator.concurrency} concurrent", served_s, out))

    model, tok = load_model(cfg.served_simulator())
    inprocess = InProcessCompleter(model, tok)
    inprocess.complete(prompts[:2], **sampling, seed=1)  # warm-up (packs the decoder's weights)
    secs, out = timed(lambda: inprocess.complete(prompts, **sampling, seed=0))
    rows.append((f"in process: HFGenerator, one call of {args.n}", secs, out))
    if args.one_at_a_time:
        local = LocalCompleter(model, tok, batch_size=1)
        local.complete(prompts[:1], **sampling)
        secs, out = timed(lambda: [local.complete([p], **sampling)[0] for p in prompts])
        rows.append(("in process: model.generate, one at a time", secs, out))

    table = Table(title=f"simulator throughput, {args.n} requests, max_tokens {sampling['max_tokens']}, "
                        f"temperature {sampling['temperature']}")
    for col in ("mode", "seconds", "requests/s", "mean output chars", "vs served"):
        table.add_column(col)
    for name, secs, outs in rows:
        table.add_row(name, f"{secs:.1f}", f"{args.n / secs:.2f}", f"{sum(map(len, outs)) / len(outs):.0f}",
                      f"{served_s / secs:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
