"""Bench: simulator requests/s through the embedded server vs one at a time in process.

Sends N simulator prompts (held-out SFT queries) (a) to the model in this process one
request at a time (``LocalCompleter``, batch 1) and (b) concurrently to ``transformers
serve`` started by ``zerosearch.serving`` with the params' server arguments (continuous
batching), through ``SimulatorClient``. Same model, prompts, max_tokens and temperature.

    python bench/simulator_throughput.py [--params params.yaml] [--n 32]

Target (simulator issue): concurrency >= 2x one-at-a-time on this 2-core machine.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from zerosearch.config import load_config
from zerosearch.lm.models import load_model
from zerosearch.search.client import SimulatorClient
from zerosearch.search.factory import server_spec
from zerosearch.search.local import LocalCompleter
from zerosearch.search.simulated import sft_prompt
from zerosearch.serving import serve_simulator
from zerosearch.stages.simulator_sft import load_heldout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--n", type=int, default=32, help="requests per mode")
    args = ap.parse_args()
    cfg = load_config(args.params)
    pairs = (load_heldout(cfg.served_simulator()) * 10)[: args.n]
    prompts = [sft_prompt(p["query"], p["question"], p["golden_answers"][0], i % 2 == 1) for i, p in enumerate(pairs)]
    sampling = {"max_tokens": cfg.simulator.max_tokens, "temperature": cfg.simulator.temperature}

    model, tok = load_model(cfg.served_simulator())
    local = LocalCompleter(model, tok, batch_size=1)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    local_out = [local.complete([p], **sampling)[0] for p in prompts]
    local_s = time.perf_counter() - t0
    del model

    with serve_simulator(server_spec(cfg), startup_timeout=cfg.simulator.startup_timeout) as url:
        client = SimulatorClient(url, model=cfg.served_simulator(), concurrency=cfg.simulator.concurrency,
                                 timeout=cfg.simulator.request_timeout)
        client.complete(prompts[:2], **sampling)  # warm-up (first request allocates the cache)
        t0 = time.perf_counter()
        served_out = client.complete(prompts, **sampling)
        served_s = time.perf_counter() - t0

    table = Table(title=f"simulator throughput, {args.n} requests, max_tokens {sampling['max_tokens']}")
    for col in ("mode", "seconds", "requests/s", "mean output chars", "ratio"):
        table.add_column(col)
    for name, secs, outs in (("in process, one at a time", local_s, local_out),
                             (f"transformers serve, {cfg.simulator.concurrency} concurrent", served_s, served_out)):
        table.add_row(name, f"{secs:.1f}", f"{args.n / secs:.2f}", f"{sum(map(len, outs)) / len(outs):.0f}",
                      f"{local_s / secs:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
