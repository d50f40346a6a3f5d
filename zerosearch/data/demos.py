"""Formatted demonstrations of the search protocol, for pretraining the tiny base policy.

Each demonstration is a prompt (``prompts.policy_prompt``) followed by a trajectory: think,
search with the subject and the relation, read real BM25 results, (for two-hop questions)
search again for the intermediate entity, answer. Demonstrations come from a separate
*demo world* (``demo_world``: another seed, thousands of fresh names) and in-domain templates
only, so the policy learns the protocol and to copy names from the question and the
documents, not the test facts. A fraction answers straight away without searching (a wrong
guess), so the base policy is imperfect in the way RL should fix.
"""

from __future__ import annotations

import random

from zerosearch.data.tinyworld import (
    RELATION_QUERY_WORDS,
    SINGLE_HOP,
    TWO_HOP,
    Entity,
    Template,
    World,
    build_corpus,
    build_world,
)
from zerosearch.protocol import (
    INVALID_ACTION,
    SearchEngine,
    Segment,
    information_block,
    policy_prompt,
)

_QUERY_FORMS = ["{s} {r}", "{r} of {s}", "{s} {r}", "{s}"]


def _query(rng: random.Random, subject: str, relation: str) -> str:
    return rng.choice(_QUERY_FORMS).format(s=subject, r=RELATION_QUERY_WORDS[relation])


def _garble(rng: random.Random, name: str) -> str:
    """A misspelled name: what a weak policy's query often looks like."""
    cut = rng.randrange(1, max(2, len(name) - 1))
    return (name[:cut] + name[cut + 1:]).strip() or name


_OPENING, _CLOSING = "\n<information>\n", "\n</information>\n"  # around a demo's documents, untrained


def _subject_template_pairs(world: World) -> list[tuple[Entity, Template]]:
    """Every (subject, in-domain template) of ``world`` a demonstration can ask about."""
    return [(e, t) for t in SINGLE_HOP + TWO_HOP for e in world.entities if e.type == t.subject_type]


def _search_segments(query: str, engine: SearchEngine, thought: str, trained: bool) -> list[Segment]:
    """think + search (trained or not) and the documents the engine returns for it."""
    docs = engine.search([query])[0]
    block = information_block(docs)
    return [(f"<think> {thought} </think>\n<search> {query} </search>", trained), (_OPENING, False),
            (block[len(_OPENING):-len(_CLOSING)], True), (_CLOSING, False)]


def demonstration(
    world: World, subject: Entity, template: Template, engine: SearchEngine, rng: random.Random,
    guess_fraction: float = 0.1, recovery_fraction: float = 0.05,
) -> list[Segment]:
    """One prompt + trajectory for (subject, template), as segments. The prompt and the
    ``<information>`` tags are not trained on, so the policy never learns to write them. The
    documents inside are, unlike RL's state masking: in pretraining they are free extra
    signal for copying names (titles repeat in the text), which the tiny policy must learn
    before it can read answers off the documents.

    With ``recovery_fraction`` a hop first goes wrong, untrained: a misspelled query (whose
    results may be empty) or a turn with no action followed by the corrective message; the
    trained continuation recovers. The policy learns to get back on track, not to err."""
    chain = world.follow(subject, template.path)
    answer = World.answer_aliases(chain[-1])[0]
    segments: list[Segment] = [(policy_prompt(template.text.format(s=subject.name)), False)]
    if rng.random() < guess_fraction:
        same_type = [e for e in world.entities if isinstance(chain[-1], Entity) and e.type == chain[-1].type]
        guess = rng.choice(same_type).name if same_type else answer
        return segments + [(f"<think> I think I know this. </think>\n<answer> {guess} </answer>", True)]
    node_name = subject.name
    for hop, relation in enumerate(template.path):
        word = RELATION_QUERY_WORDS[relation]
        lead = "I need" if hop == 0 else f"The answer so far is {node_name}. Now I need"
        thought = f"{lead} the {word} of {node_name}."
        if rng.random() < recovery_fraction:
            if rng.random() < 0.5:
                segments += _search_segments(_query(rng, _garble(rng, node_name), relation), engine, thought, False)
                thought = f"That search missed. I need the {word} of {node_name}."
            else:
                segments += [(f"<think> {thought} </think>\n", False), (INVALID_ACTION, False)]
        segments += _search_segments(_query(rng, node_name, relation), engine, thought, True)
        value = chain[hop]
        node_name = value.name if isinstance(value, Entity) else str(value)
    final = f"<think> The {RELATION_QUERY_WORDS[template.path[-1]]} is {answer}. </think>\n<answer> {answer} </answer>"
    return segments + [(final, True)]


DEMO_SEED_OFFSET = 1_000_003  # the demo world's seed is the run's seed plus this


def demo_world(seed: int, n_entities: int) -> tuple[World, list[dict[str, str]]]:
    """A separate world for demonstrations, and its corpus."""
    world = build_world(seed + DEMO_SEED_OFFSET, n_entities)
    return world, build_corpus(world, seed + DEMO_SEED_OFFSET)


def protocol_demos(
    world: World, engine: SearchEngine, n: int, seed: int, guess_fraction: float = 0.1,
) -> list[list[Segment]]:
    """``n`` demonstrations over ``world`` (searched with ``engine``), one- and two-hop
    in-domain templates."""
    rng = random.Random(seed + 4)
    pairs = _subject_template_pairs(world)
    return [demonstration(world, *rng.choice(pairs), engine, rng, guess_fraction) for _ in range(n)]


def reading_drill(demo: list[Segment]) -> list[Segment]:
    """``demo`` trained only on the turns that follow an ``<information>`` block: the
    intermediate entity or the answer, copied from the documents. The question, the first
    search and the documents stay in the context, untrained, so the drill's whole loss is
    reading."""
    after_docs = [i + 1 for i, (text, _) in enumerate(demo[:-1]) if text == _CLOSING]
    return [(text, i in after_docs) for i, (text, _) in enumerate(demo)]


def reading_drills(world: World, engine: SearchEngine, n: int, seed: int) -> list[list[Segment]]:
    """``n`` reading drills over ``world``: demonstrations without guesses or recoveries (every
    answer is in the documents the demonstration read), each as ``reading_drill``."""
    rng = random.Random(seed + 6)
    pairs = _subject_template_pairs(world)
    return [reading_drill(demonstration(world, *rng.choice(pairs), engine, rng, guess_fraction=0.0,
                                        recovery_fraction=0.0)) for _ in range(n)]


def demo_searches(world: World, n: int, seed: int) -> list[dict]:
    """``n`` searches a demonstrator makes on ``world``: for a random (subject, in-domain
    template), every hop's well-formed query, with the question and gold answers; used as
    extra simulator SFT data on names no model can have memorized."""
    rng = random.Random(seed + 5)
    pairs = _subject_template_pairs(world)
    out: list[dict] = []
    while len(out) < n:
        subject, template = rng.choice(pairs)
        chain = world.follow(subject, template.path)
        node = subject.name
        for hop, relation in enumerate(template.path):
            value = chain[hop]
            out.append({"query": _query(rng, node, relation), "question": template.text.format(s=subject.name),
                        "golden_answers": World.answer_aliases(value)})
            node = value.name if isinstance(value, Entity) else str(value)
    return out[:n]
