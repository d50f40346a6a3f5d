"""Simulator input templates (configs/prompts): rendering, custom files, errors, and the exact
requests that go out (the released-simulator golden request, the tiny world's unchanged one)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.conftest import REPO, micro_config
from tests.test_client import Server
from zerosearch.config import ConfigError, load_config
from zerosearch.search.client import request_seed
from zerosearch.search.curriculum import mix_seed
from zerosearch.search.factory import make_engine, simulator_template
from zerosearch.search.templates import (
    PROMPTS_DIR,
    TemplateError,
    load_template,
    named_template,
)

NAMES = ("ours-sft", "ours-prompt", "zerosearch-sft", "zerosearch-prompt")
Q, QUESTION, ANSWER = "first nobel prize physics", "who got the first nobel prize in physics?", "Wilhelm Conrad Röntgen"


def render(name: str, noisy: bool, k: int = 5) -> str:
    return named_template(name).render(Q, QUESTION, ANSWER, noisy, k)


def test_every_named_template_is_a_file_in_configs_prompts_and_a_config_choice():
    assert PROMPTS_DIR == REPO / "configs" / "prompts"
    assert {p.stem for p in PROMPTS_DIR.glob("*.yaml")} == set(NAMES)
    from zerosearch.config import SimulatorSection

    assert set(SimulatorSection.model_fields["prompt"].annotation.__args__) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_slots_are_filled_and_no_placeholder_is_left(name):
    for noisy in (False, True):
        text = render(name, noisy)
        assert Q in text and "$" not in text
        kind = "noisy" if noisy else "useful"
        assert kind in text.lower()


def test_ours_sft_is_the_tiny_simulators_instruction_byte_for_byte():
    assert render("ours-sft", False) == (
        "Simulate a search engine. Write useful documents for the query.\n"
        f"Question: {QUESTION}\nAnswer: {ANSWER}\nQuery: {Q}\nDocuments (useful):\n")
    assert render("ours-sft", True) == (
        "Simulate a search engine. Write noisy documents for the query.\n"
        f"Question: {QUESTION}\nAnswer: {ANSWER}\nQuery: {Q}\nDocuments (noisy):\n")


def _previous_chat_prompt(query: str, question: str, answer: str, noisy: bool, k: int) -> str:
    """The prompt-mode text as simulated.chat_prompt wrote it before templates (our own)."""
    useful_example = (
        "Doc 1: (Lake Orvane) Lake Orvane is the deepest lake of the Teskar valley, 312 metres at "
        "its deepest point, fed by three glacier streams.\n"
        "Doc 2: (Teskar valley) The valley's largest lake, Lake Orvane, reaches a depth of 312 metres.")
    noisy_example = (
        "Doc 1: (Teskar valley) The Teskar valley is known for its vineyards and a railway built in 1898.\n"
        "Doc 2: (Orvane festival) Every summer the town of Orvane holds a music festival by the water.")
    if noisy:
        task = (f"Write {k} documents that are related to the query but do NOT contain the answer "
                f"\"{answer}\" and do not help to find it.")
    else:
        task = (f"Write {k} documents that help answer the question; the information in them must "
                f"support the answer \"{answer}\".")
    return ("You are a search engine. Given a search query, you return short documents, about 30 "
            "words each, formatted 'Doc 1: (title) text' up to 'Doc "
            f"{k}: ...', and nothing else.\n{task}\n\n"
            "Example. Question: How deep is Lake Orvane? Answer: 312 metres. Query: Lake Orvane depth\n"
            f"Useful documents:\n{useful_example}\nNoisy documents:\n{noisy_example}\n\n"
            f"Question: {question}\nAnswer: {answer}\nQuery: {query}\n"
            f"{'Noisy' if noisy else 'Useful'} documents:")


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("noisy", [False, True])
def test_ours_prompt_is_unchanged(noisy, k):
    odd = ("q $x {0}", "Q with $$ and {braces}?", "A$b")  # values are never re-parsed
    for q, question, answer in [(Q, QUESTION, ANSWER), odd]:
        assert named_template("ours-prompt").render(q, question, answer, noisy, k) == \
            _previous_chat_prompt(q, question, answer, noisy, k)


def test_zerosearch_sft_has_the_released_simulators_structure_and_cues():
    useful, noisy = render("zerosearch-sft", False), render("zerosearch-sft", True)
    for text, kind, cue in ((useful, "useful", "Useful Output:"), (noisy, "noisy", "Noisy Output:")):
        assert text.endswith(f"Query: {Q}\n{cue}\n")  # the query, then the cue, last
        assert "web search engine" in text and f"five {kind} documents" in text
        assert f'"{QUESTION}"' in text and ANSWER in text  # the question and its gold answer
        assert "30 words" in text and f"{kind} information" in text
        assert text.index(QUESTION) < text.index(f"Query: {Q}")
    assert useful.replace("useful", "noisy").replace("Useful", "Noisy") == noisy  # only the kind differs


def test_zerosearch_prompt_has_one_worked_example_and_the_noisy_request_names_neither():
    useful, noisy = render("zerosearch-prompt", False), render("zerosearch-prompt", True)
    for text, cue in ((useful, "Useful Output:"), (noisy, "Noisy Output:")):
        assert text.count(cue) == 2 and text.endswith(f"Query: {Q}\n{cue}\n")  # example + the request
        assert [f"Doc {i}:" in text for i in range(1, 7)] == [True] * 5 + [False]  # five example documents
        assert text.count("Query:") == 2 and "directly" in text and "web search engine" in text
    assert QUESTION in useful and ANSWER in useful
    assert QUESTION not in noisy and ANSWER not in noisy and "answer" not in noisy.lower()
    assert "related but noisy" in noisy


def test_a_custom_template_file_is_read_relative_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text(
        "description: test\nuseful: |-\n  U $kind/$Kind k=$k ${query}! $question => $answer ($$5)\n"
        "noisy: |-\n  N $query\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cfg = micro_config(tmp_path, "simulator.prompt_template_file=mine.yaml", "simulator_sft.enabled=false")
    template = simulator_template(cfg)
    assert template.name == "mine" and template.source == "mine.yaml"
    assert template.render("q", "Q?", "A", False, 4) == "U useful/Useful k=4 q! Q? => A ($5)"
    engine = make_engine(cfg, "simulated", simulator_url="http://127.0.0.1:9/v1")
    assert engine.prompt("q", "Q?", ["A", "alias"], noisy=True) == "N q"


@pytest.mark.parametrize("text, message", [
    ("useful: 'U $answr'\nnoisy: 'N'\n", r"`useful` uses unknown placeholder \$answr \(known: \$query"),
    ("useful: 'U'\nnoisy: 'costs $ 5'\n", r"`noisy` has a bad placeholder .*write \$\$ for a literal dollar"),
    ("useful: 'U'\n", r"missing \['noisy'\]"),
    ("useful: 'U'\nnoisy: 'N'\nsystem: ''\n", r"unknown key\(s\) \['system'\]"),
    ("useful: 'U'\nnoisy: ''\n", r"`noisy` must be a non-empty text"),
    ("- a list\n", r"must be a mapping"),
])
def test_bad_template_files_fail_naming_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TemplateError, match=message) as info:
        load_template(path)
    assert str(path) in str(info.value)


def test_missing_templates_name_the_path(tmp_path):
    with pytest.raises(TemplateError, match=r"template file not found: .*nowhere\.yaml"):
        simulator_template(micro_config(tmp_path, f"simulator.prompt_template_file={tmp_path}/nowhere.yaml",
                                        "simulator_sft.enabled=false"))
    with pytest.raises(TemplateError, match=r"no simulator prompt template 'ours-typo'.*ours-sft"):
        named_template("ours-typo")


def test_config_refuses_mismatched_request_settings(tmp_path):
    with pytest.raises(ConfigError, match="system_message must be null with api: completions"):
        micro_config(tmp_path, "simulator.system_message=''")
    with pytest.raises(ConfigError, match="simulator_sft.enabled fine-tunes the simulator on the ours-sft"):
        micro_config(tmp_path, "simulator.prompt=zerosearch-sft", "simulator.api=chat")
    with pytest.raises(ConfigError, match="simulator.prompt"):
        micro_config(tmp_path, "simulator.prompt=zerosearch-typo")


def _docs_reply(path: str, body: dict, n: int):
    text = "\n\n".join(f"Doc {i}: document number {i} about Wilhelm Conrad Röntgen." for i in range(1, 8))
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}} if path.endswith("/chat/completions")
              else {"index": 0, "text": text})
    return 200, {"choices": [choice]}


@pytest.fixture
def docs_server():
    server = Server(_docs_reply)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


GOLDEN_USEFUL = (
    "You act as the Google web search engine.\n"
    "For the query below, write five useful documents.\n"
    "\n"
    "The user is looking for the answer to the question \"who got the first nobel prize in physics?\", "
    "and that answer is Wilhelm Conrad Röntgen.\n"
    "Make each document roughly 30 words long and let the documents carry useful information.\n"
    "\n"
    "Query: first nobel prize physics\n"
    "Useful Output:\n"
)


def first_request_seed(cfg) -> int:
    """The seed sent with the first request of the first search call at step 0."""
    return request_seed(mix_seed(cfg.base.seed, 0, 1), 0)


@pytest.mark.parametrize("noisy", [False, True])
def test_golden_released_simulator_request(docs_server, noisy):
    """configs/paper/base.yaml (the released SearchSimulation_14B, zerosearch-sft): the exact
    JSON body for one query: an empty system message, then the user message; temperature
    0.8, 600 tokens, no top_p (the server's default, as the reference); Doc 6 on is cut."""
    p = 1.0 if noisy else 0.0
    cfg = load_config(REPO / "configs/paper/base.yaml", [f"simulator.curriculum.p_start={p}",
                                                         f"simulator.curriculum.p_end={p}"])
    engine = make_engine(cfg, "simulated", simulator_url=docs_server.url)
    docs = engine.search([Q], questions=[QUESTION], answers=[[ANSWER, "Röntgen"]], step=0)[0]
    expected = GOLDEN_USEFUL.replace("useful", "noisy").replace("Useful", "Noisy") if noisy else GOLDEN_USEFUL
    assert docs_server.calls == [("/v1/chat/completions", {
        "model": "sunhaonlp/SearchSimulation_14B",
        "messages": [{"role": "system", "content": ""}, {"role": "user", "content": expected}],
        "max_tokens": 600,
        "temperature": 0.8,
        "seed": first_request_seed(cfg),  # ours: the reference sends none
    })]
    assert [d.text for d in docs] == [f"document number {i} about Wilhelm Conrad Röntgen." for i in range(1, 6)]
    assert {d.noisy for d in docs} == {noisy}


def test_the_tiny_worlds_request_is_unchanged(docs_server, tmp_path):
    """params.yaml: ours-sft as a raw completion, temperature 1.0, top_p 1.0, 200 tokens (sent
    this way when served: the tiny default is inprocess)."""
    cfg = micro_config(tmp_path)
    engine = make_engine(cfg, "simulated", simulator_url=docs_server.url)
    engine.search(["velora country"], questions=["Where is Velora?"], answers=[["Zandoria"]], step=0)
    assert docs_server.calls == [("/v1/completions", {
        "model": str(Path(cfg.path("models")) / "simulator_sft"),
        "prompt": "Simulate a search engine. Write useful documents for the query.\n"
                  "Question: Where is Velora?\nAnswer: Zandoria\nQuery: velora country\nDocuments (useful):\n",
        "max_tokens": 200, "temperature": 1.0, "top_p": 1.0, "seed": first_request_seed(cfg),
    })]
