"""The simulator probe: its rates on fake completers, the train stage's hook (failing early
against a fake server, before any model is loaded) and `zerosearch simulator probe`."""

from __future__ import annotations

import threading

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import micro_config
from tests.test_client import Server
from zerosearch.cli import app
from zerosearch.data.schema import write_qa_parquet
from zerosearch.protocol import Doc
from zerosearch.search.probe import (
    ProbeResult,
    SimulatorProbeError,
    check_probe,
    contains_gold,
    probe_questions,
    run_probe,
)
from zerosearch.search.templates import named_template
from zerosearch.tracker import MemoryTracker

ROWS = [{"id": str(i), "question": f"Where was person {i} born?", "golden_answers": [f"Town{i}", f"Town{i} City"],
         "data_source": "test", "split": "train"} for i in range(40)]


def answer_of(prompt: str) -> str:
    return prompt.split("Answer: ")[1].split("\n")[0]


class SwitchCompleter:
    """Useful prompts get the answer; noisy ones get it for ``leak`` of the questions; the
    ``broken`` prompt indices get no documents."""

    def __init__(self, leak: float = 0.0, broken: tuple[int, ...] = ()):
        self.leak, self.broken, self.calls = leak, set(broken), []

    def complete(self, prompts, *, max_tokens, temperature, top_p=1.0, seed=None):
        self.calls.append({"n": len(prompts), "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p})
        out = []
        for i, p in enumerate(prompts):
            number = int(answer_of(p).removeprefix("Town"))
            gives = "(useful)" in p or number < self.leak * len(ROWS)
            out.append("   " if i in self.broken else
                       f"Doc 1: intro.\nDoc 2: born in {answer_of(p) if gives else 'somewhere'}.\nDoc 6: {answer_of(p)}")
        return out


def probe(completer, n=20, min_gap=0.5, **kw):
    return run_probe(completer, named_template("ours-sft"), ROWS, n_questions=n, min_gap=min_gap, top_k=5,
                     max_tokens=50, temperature=0.8, top_p=None, model="fake-model", **kw)


def test_a_working_switch_passes():
    fake = SwitchCompleter()
    result = probe(fake)
    assert (result.useful_contains_gold_rate, result.noisy_contains_gold_rate, result.malformed_rate) == (1.0, 0.0, 0.0)
    assert result.gap == 1.0 and result.passed and result.n_questions == 20
    check_probe(result)  # no error
    # one batched call, the run's sampling; "Doc 6" on is cut (the noisy docs would hold it)
    assert fake.calls == [{"n": 40, "max_tokens": 50, "temperature": 0.8, "top_p": None}]
    assert result.metrics() == {"simulator_probe/useful_contains_gold_rate": 1.0,
                                "simulator_probe/noisy_contains_gold_rate": 0.0, "simulator_probe/gap": 1.0,
                                "simulator_probe/malformed_rate": 0.0, "simulator_probe/n_questions": 20.0}


def test_a_switch_that_does_not_work_fails_naming_rates_template_and_model():
    result = probe(SwitchCompleter(leak=1.0))  # noisy outputs hold the answer as often as useful ones
    assert result.useful_contains_gold_rate == result.noisy_contains_gold_rate == 1.0 and not result.passed
    with pytest.raises(SimulatorProbeError) as info:
        check_probe(result)
    message = str(info.value)
    for needle in ("useful documents, 100%", "noisy ones, 100%", "gap +0.00", "min_gap 0.50", "template ours-sft",
                   "model fake-model", "simulator.prompt", "zerosearch-sft", "zerosearch simulator probe"):
        assert needle in message, needle


def test_rates_count_malformed_outputs_and_partial_leaks():
    picked = probe_questions(ROWS, 10, seed=0)
    leaking = sum(int(r["golden_answers"][0].removeprefix("Town")) < 0.5 * len(ROWS) for r in picked)
    result = probe(SwitchCompleter(leak=0.5, broken=(0, 1)), n=10, min_gap=0.2)
    assert result.useful_contains_gold_rate == pytest.approx(0.8)  # two useful outputs malformed
    assert result.noisy_contains_gold_rate == pytest.approx(leaking / 10)
    assert result.malformed_rate == pytest.approx(2 / 20)
    assert result.passed == (0.8 - leaking / 10 >= 0.2)


def test_questions_are_a_seeded_sample_without_global_random_state():
    torch_state, = [torch.random.get_rng_state()]
    import random

    random.seed(123)
    before = random.random()
    random.seed(123)
    first = probe_questions(ROWS, 8, seed=3)
    assert random.random() == before  # the global RNG was not used
    assert probe_questions(ROWS, 8, seed=3) == first != probe_questions(ROWS, 8, seed=4)
    assert probe_questions([{"question": "q", "golden_answers": []}], 4, 0) == []
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    empty = run_probe(SwitchCompleter(), named_template("ours-sft"), [], n_questions=4, min_gap=0.1, top_k=5,
                      max_tokens=8, temperature=1.0)
    assert not empty.passed and "no training question" in empty.failure_message()


def test_contains_gold_is_normalized_whole_word_containment():
    assert contains_gold(["He was born in the Town of Velora."], ["velora"])
    assert contains_gold(["x"], ["nothing", "X!"])
    assert not contains_gold(["Born in 18890."], ["1889"]) and not contains_gold(["text"], [""])


# --- the train stage's hook and the CLI, against a fake OpenAI-compatible server ---------------

def server_replying(switch: bool):
    def respond(path, body, n):
        prompt = body["prompt"]
        answer = answer_of(prompt) if switch and "(useful)" in prompt else "somewhere"
        return 200, {"choices": [{"index": 0, "text": f"Doc 1: born in {answer}.\nDoc 2: more."}]}

    server = Server(respond)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def fake_simulator():
    servers = []

    def start(switch: bool) -> Server:
        servers.append(server_replying(switch))
        return servers[-1]

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def probed_config(tmp_path, url, *extra):
    cfg = micro_config(tmp_path, "simulator.backend=url", f"simulator.url={url}", "simulator.probe.n_questions=6",
                       "simulator.startup_timeout=10", "train.val_every=0", *extra)  # no test files here
    write_qa_parquet(ROWS, cfg.path("data") / "train.parquet")
    return cfg


def test_train_stage_fails_at_the_start_when_the_switch_does_not_work(tmp_path, fake_simulator):
    from zerosearch.stages import train

    server = fake_simulator(switch=False)
    cfg = probed_config(tmp_path, server.url)
    tracker = MemoryTracker()
    with pytest.raises(SimulatorProbeError, match=r"useful documents, 0%.*noisy ones, 0%.*template ours-sft"):
        train.run(cfg, tracker)  # no models exist under tmp_path: it fails before loading any
    assert len(server.calls) == 12 and not (cfg.path("models") / "policy").exists()
    assert tracker.metrics == [(None, {"simulator_probe/useful_contains_gold_rate": 0.0,
                                       "simulator_probe/noisy_contains_gold_rate": 0.0, "simulator_probe/gap": 0.0,
                                       "simulator_probe/malformed_rate": 0.0, "simulator_probe/n_questions": 6.0})]


def test_probe_hook_logs_passes_and_leaves_training_state_alone(tmp_path, fake_simulator):
    from zerosearch.stages.train import probe_simulator

    server = fake_simulator(switch=True)
    cfg = probed_config(tmp_path, server.url)
    tracker, state = MemoryTracker(), torch.random.get_rng_state()
    probe_simulator(cfg, server.url, ROWS, tracker)
    assert torch.equal(torch.random.get_rng_state(), state)  # no draw from this process's torch RNG
    assert tracker.metrics[0][1]["simulator_probe/gap"] == 1.0 and len(server.calls) == 12
    assert all(body["temperature"] == cfg.simulator.temperature for _, body in server.calls)
    off = probed_config(tmp_path, server.url, "simulator.probe.enabled=false")
    probe_simulator(off, server.url, ROWS, tracker)
    assert len(server.calls) == 12 and len(tracker.metrics) == 1  # disabled: nothing sent


def test_cli_simulator_probe(tmp_path, fake_simulator):
    runner = CliRunner()
    help_text = runner.invoke(app, ["simulator", "probe", "--help"], terminal_width=200).output
    for needle in ("useful", "noisy", "min_gap", "--params", "--set", "--n"):
        assert needle in help_text, needle
    assert "probe" in runner.invoke(app, ["simulator", "--help"]).output

    def invoke(switch: bool):
        server = fake_simulator(switch)
        overrides = [f"base.paths.data={tmp_path}/data", "simulator.backend=url", f"simulator.url={server.url}",
                     "simulator.startup_timeout=10"]
        write_qa_parquet(ROWS, tmp_path / "data" / "train.parquet")
        return runner.invoke(app, ["simulator", "probe", "--n", "5", *[a for o in overrides for a in ("--set", o)]],
                             terminal_width=200), server

    good, server = invoke(switch=True)
    assert good.exit_code == 0, good.output
    assert "100.0%" in good.output and "0.0%" in good.output and "switch works" in good.output
    assert len(server.calls) == 10  # --n 5: five questions, two requests each
    bad, _ = invoke(switch=False)
    assert bad.exit_code == 1 and "simulator probe failed" in bad.output


def test_probe_result_passes_at_exactly_min_gap():
    assert ProbeResult(10, 0.3, 0.1, 0.0, 0.2).passed and not ProbeResult(10, 0.3, 0.11, 0.0, 0.2).passed


class _Bm25Stub:
    """A real engine's stand-in: finds the answer for the first ``found`` questions."""

    def __init__(self, found: int):
        self.found, self.queries = found, []

    def search(self, queries, **kw):
        self.queries.append(list(queries))
        out = []
        for q in queries:
            number = int(q.split("person ")[1].split(" ")[0])
            gold = next(r for r in ROWS if r["question"] == q)["golden_answers"][0]
            out.append([Doc("t", f"born in {gold}" if number < self.found else "born somewhere")])
        return out


def test_the_real_engine_answers_the_same_queries_for_its_rate():
    engine = _Bm25Stub(found=20)
    result = probe(SwitchCompleter(), n=40, reference=engine)
    assert result.bm25_contains_gold_rate == 0.5  # 20 of the 40 probed questions
    assert sorted(engine.queries[0]) == sorted(r["question"] for r in ROWS)
    assert result.metrics()["simulator_probe/bm25_contains_gold_rate"] == 0.5
    assert result.record() == {"n_questions": 40, "useful_contains_gold_rate": 1.0, "noisy_contains_gold_rate": 0.0,
                               "gap": 1.0, "malformed_rate": 0.0, "bm25_contains_gold_rate": 0.5}
    assert "BM25 on the same queries 50%" in result.summary()
    assert probe(SwitchCompleter()).bm25_contains_gold_rate is None  # no real engine: no rate


def test_probe_hook_hands_its_result_to_the_stage(tmp_path, fake_simulator):
    from zerosearch.stages.train import probe_simulator

    server = fake_simulator(switch=True)
    cfg = probed_config(tmp_path, server.url)
    results: list = []
    probe_simulator(cfg, server.url, ROWS, MemoryTracker(), results=results)
    assert len(results) == 1 and results[0].record()["gap"] == 1.0
    assert results[0].bm25_contains_gold_rate is None  # no BM25 index under this data dir
