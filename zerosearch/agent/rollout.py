"""The multi-turn search rollout: the policy writes, the engine answers, until an answer.

Per turn, every unfinished trajectory of the batch generates until ``</search>``,
``</answer>`` or end of text (one batched ``generate`` call of a ``Generator``, e.g.
``zerosearch.lm.generation.HFGenerator``, which keeps each trajectory's KV cache between turns); the first ``<search>`` or
``<answer>`` block of the turn is its action. All pending queries of the batch go to the
engine in ONE batched call with the current training step (the simulator's curriculum
depends on it); the documents are appended inside ``<information>``; a turn with no action
gets the corrective message. The turn budget counts as the reference's ``max_turns`` does:
``max_search_turns`` turns whose searches get documents, then one more generation for the
final answer; a search or an invalid turn on that last turn gets no documents and no
corrective message (nothing would read them), and a trajectory still without an answer stops
there.

The prompt is a question's data-row chat messages when it has them (``prompts``), else our
template, through the tokenizer's chat template per ``chat`` (``protocol.policy_prompt``), and
starts with the tokenizer's start tokens once (``protocol.encode_prompt``).

State masking: the loss mask is 1 exactly on tokens the policy sampled. Prompt tokens,
``<information>`` blocks and corrective messages are context the policy did not write, so
they carry mask 0 and never enter the policy (or value) loss. The batch also holds the
response mask (1 on every token after the prompt, observations included): the paper's
ablation without state masking trains on it (``RolloutBatch.trained_mask``,
``train.mask_observations: false``); the sampling is the same either way.

Token ids are kept as generated (never re-tokenized), so log-probs computed later on
``input_ids`` are those of the sampled tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from zerosearch.protocol import (
    CORRECTIVE_MESSAGES,
    INFORMATION_LAYOUTS,
    ChatMode,
    Doc,
    Layout,
    Message,
    SearchEngine,
    encode_prompt,
    information_block,
    parse_action,
    policy_prompt,
)


@dataclass(frozen=True)
class RolloutSettings:
    """How a multi-turn rollout runs, built once from the config (``from_config``) and passed
    to every rollout: training, evaluation, ``zerosearch ask``, the registered MLflow model,
    simulator-SFT pair collection and the benches, so none of them can drift.

    max_search_turns:    turns whose search gets documents (the reference's ``max_turns``);
                         a trajectory generates at most ``max_search_turns + 1`` times, the
                         last one for the final answer
    max_response_tokens: new tokens per turn
    max_obs_tokens:      tokens of one ``<information>`` block (cut, closing tag kept)
    max_context_tokens:  a trajectory that could outgrow this window in its next turn stops
                         there without an answer (None: no limit)
    chat:                the chat template: ``"auto"`` when the tokenizer has one, True
                         always, False never (plain text)
    corrective_message:  wording of the message after a turn with no action (``ours`` |
                         ``reference``, ``protocol.CORRECTIVE_MESSAGES``)
    information_layout:  the text around documents (``protocol.INFORMATION_LAYOUTS``)
    """

    max_search_turns: int
    max_response_tokens: int
    max_obs_tokens: int
    max_context_tokens: int | None = None
    chat: ChatMode = False
    corrective_message: Layout = "ours"
    information_layout: Layout = "ours"

    @classmethod
    def from_config(cls, cfg) -> RolloutSettings:
        """``train.max_turns`` (search turns), ``max_response_tokens``, ``max_obs_tokens``,
        ``max_prompt_tokens`` (the context window), ``corrective_message``,
        ``information_layout`` and ``base.chat_prompt`` of a ``zerosearch.config.Config``."""
        t = cfg.train
        return cls(max_search_turns=t.max_turns, max_response_tokens=t.max_response_tokens,
                   max_obs_tokens=t.max_obs_tokens, max_context_tokens=t.max_prompt_tokens,
                   chat=cfg.base.chat_prompt, corrective_message=t.corrective_message,
                   information_layout=t.information_layout)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> RolloutSettings:
        """The inverse of ``to_dict``; an unknown or missing field is an error naming it.

        Settings logged before the turn budget was counted as the reference counts it hold
        ``max_turns`` (generation turns, the answer turn included): N becomes
        ``max_search_turns`` N - 1, the same rollouts. Those settings also predate the layout
        options, so a missing ``corrective_message`` / ``information_layout`` is ``ours``,
        what they ran with."""
        raw = dict(raw)
        if "max_turns" in raw and "max_search_turns" not in raw:
            raw["max_search_turns"] = raw.pop("max_turns") - 1
            raw.setdefault("corrective_message", "ours")
            raw.setdefault("information_layout", "ours")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"rollout settings: unknown field(s) {unknown}; known: {sorted(names)}")
        return cls(**raw)


class Generator(Protocol):
    """Continues token-id contexts by one turn; returns only the new ids per context,
    ending with the stop token when generation stopped on one. ``keys`` name each context's
    trajectory, stable across the turns of one rollout (a generator may keep its KV cache
    per key; ``zerosearch.lm.generation.HFGenerator`` does)."""

    def generate(self, contexts: Sequence[list[int]], max_new_tokens: int,
                 keys: Sequence[Hashable] | None = None) -> list[list[int]]: ...


@dataclass
class Trajectory:
    """One rollout's state while the loop runs."""

    question: str
    golden_answers: list[str]
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)  # aligned with response_ids
    status: Literal["generating", "searching", "done"] = "generating"
    pending_query: str | None = None
    answer: str | None = None
    turns: int = 0
    searches: int = 0
    invalid_actions: int = 0
    noisy: list[bool | None] = field(default_factory=list)  # per search: docs asked noisy?
    queries: list[str] = field(default_factory=list)  # per search: the query the engine got
    documents: list[list[Doc]] = field(default_factory=list)  # per search: the documents it returned
    truncated_observations: int = 0
    hit_length_limit: int = 0  # turns that ran out of max_new_tokens without stopping
    hit_context_limit: bool = False  # stopped because the next turn could outgrow the window

    def append(self, ids: list[int], trained: bool) -> None:
        self.response_ids.extend(ids)
        self.loss_mask.extend([int(trained)] * len(ids))

    @property
    def context(self) -> list[int]:
        return self.prompt_ids + self.response_ids


@dataclass
class RolloutBatch:
    """Rollouts of a batch, right-padded to one length L = prompt + response.

    input_ids:      (B, L) prompt then response tokens, pad after
    attention_mask: (B, L) 1 on real tokens
    loss_mask:      (B, L) 1 exactly on tokens the policy sampled
    prompt_lengths: (B,)
    response_mask:  (B, L) 1 on every response token: the sampled ones, ``<information>``
                    blocks and corrective messages; 0 on the prompt and padding
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    prompt_lengths: torch.Tensor
    trajectories: list[Trajectory]
    response_mask: torch.Tensor

    def trained_mask(self, mask_observations: bool) -> torch.Tensor:
        """The ``(B, L)`` mask of tokens the update trains on: ``loss_mask`` under state
        masking (``mask_observations``, the paper's method), else ``response_mask`` (its
        ablation: observations are trained on as if the policy had written them). Never the
        prompt."""
        return self.loss_mask if mask_observations else self.response_mask

    @property
    def answers(self) -> list[str | None]:
        return [t.answer for t in self.trajectories]

    @property
    def num_searches(self) -> torch.Tensor:  # (B,)
        return torch.tensor([t.searches for t in self.trajectories])

    def stats(self) -> dict[str, float]:
        """Batch means for logging."""
        ts = self.trajectories
        n = max(1, len(ts))
        noisy = [x for t in ts for x in t.noisy if x is not None]
        return {
            "searches_per_trajectory": sum(t.searches for t in ts) / n,
            "turns_per_trajectory": sum(t.turns for t in ts) / n,
            "invalid_actions_per_trajectory": sum(t.invalid_actions for t in ts) / n,
            "answered_fraction": sum(t.answer is not None for t in ts) / n,
            "response_tokens": float(self.loss_mask.sum()) / n,
            "truncated_observations": float(sum(t.truncated_observations for t in ts)),
            "turns_hit_length_limit": float(sum(t.hit_length_limit for t in ts)),
            "context_limit_stops": float(sum(t.hit_context_limit for t in ts)),
            "noisy_fraction": sum(noisy) / len(noisy) if noisy else 0.0,
        }


def run_rollouts(
    generator: Generator,
    tokenizer,
    engine: SearchEngine,
    questions: Sequence[str],
    golden_answers: Sequence[Sequence[str]],
    settings: RolloutSettings,
    *,
    step: int = 0,
    prompts: Sequence[Sequence[Message] | None] | None = None,
) -> RolloutBatch:
    """Roll out one trajectory per question (repeat questions for a group) under ``settings``;
    ``step`` is the training step the engine sees (the simulator's curriculum). ``prompts``
    (aligned with ``questions``) are the data rows' chat messages, None where a row has none
    (our template then)."""
    s = settings
    rows = prompts if prompts is not None else [None] * len(questions)
    texts = [policy_prompt(q, tokenizer, chat=s.chat, messages=m) for q, m in zip(questions, rows, strict=True)]
    prompt_ids = {text: encode_prompt(text, tokenizer) for text in dict.fromkeys(texts)}  # a group's: once
    trajs = [Trajectory(q, list(g), list(prompt_ids[text]))
             for q, g, text in zip(questions, golden_answers, texts, strict=True)]
    rollout = object()  # keys are scoped to this call: no cache outlives the rollout
    n_turns = s.max_search_turns + 1  # searches with documents, then the final answer turn
    corrective = tokenizer(CORRECTIVE_MESSAGES[s.corrective_message], add_special_tokens=False)["input_ids"]
    for turn in range(n_turns):
        active = [t for t in trajs if t.status == "generating"]
        if not active:
            break
        if s.max_context_tokens is not None:
            for t in active:
                if len(t.context) + s.max_response_tokens > s.max_context_tokens:
                    t.status, t.hit_context_limit = "done", True
            active = [t for t in active if t.status == "generating"]
            if not active:
                break
        last_turn = turn == n_turns - 1
        outputs = generator.generate([t.context for t in active], s.max_response_tokens,
                                     keys=[(rollout, id(t)) for t in active])
        for t, new_ids in zip(active, outputs, strict=True):
            _take_turn(t, new_ids, tokenizer, s.max_response_tokens, last_turn=last_turn, corrective=corrective)
        if not last_turn:  # after the last turn nobody reads the documents: no engine call
            _answer_searches([t for t in trajs if t.status == "searching"], engine, tokenizer, s, step)
    for t in trajs:
        t.status = "done"
    return _collate(trajs, pad_id(tokenizer))


def _take_turn(t: Trajectory, new_ids: list[int], tokenizer, max_new: int, last_turn: bool,
               corrective: list[int]) -> None:
    t.turns += 1
    t.append(new_ids, trained=True)
    text = tokenizer.decode(new_ids, skip_special_tokens=False)
    action = parse_action(text)
    if len(new_ids) >= max_new and action is None:
        t.hit_length_limit += 1
    if action is None:
        t.invalid_actions += 1
        if last_turn:
            t.status = "done"
            return
        # The corrective message is the environment speaking: context, not policy output.
        t.append(corrective, trained=False)
        t.status = "generating"
    elif action[0] == "answer":
        t.answer, t.status = action[1], "done"
    else:
        t.pending_query, t.status = action[1], "done" if last_turn else "searching"


def _answer_searches(pending: list[Trajectory], engine: SearchEngine, tokenizer, s: RolloutSettings,
                     step: int) -> None:
    """One batched engine call for every pending query; documents go in with mask 0."""
    if not pending:
        return
    results = engine.search(
        [t.pending_query or "" for t in pending],
        questions=[t.question for t in pending],
        answers=[t.golden_answers for t in pending],
        step=step,
    )
    blocks = tokenizer([information_block(docs, s.information_layout, tokenizer=tokenizer) for docs in results],
                       add_special_tokens=False)["input_ids"]
    for t, docs, ids in zip(pending, results, blocks, strict=True):
        t.searches += 1
        t.noisy.append(_noisy_flag(docs))
        t.queries.append(t.pending_query or "")
        t.documents.append(list(docs))
        # Retrieved documents are state, not actions: state masking keeps them out of the loss.
        t.append(_observation_ids(ids, tokenizer, s, t), trained=False)
        t.pending_query = None
        t.status = "generating"


def _noisy_flag(docs: list[Doc]) -> bool | None:
    flags = {d.noisy for d in docs}
    return flags.pop() if len(flags) == 1 else None


def _observation_ids(ids: list[int], tokenizer, s: RolloutSettings, t: Trajectory) -> list[int]:
    """The tokens of an ``<information>`` block, cut to ``max_obs_tokens`` (closing tag kept)."""
    if len(ids) <= s.max_obs_tokens:
        return ids
    t.truncated_observations += 1
    closing = tokenizer(INFORMATION_LAYOUTS[s.information_layout][1], add_special_tokens=False)["input_ids"]
    return ids[: max(0, s.max_obs_tokens - len(closing))] + closing


def pad_id(tokenizer) -> int:
    """The id right-padding uses: the pad token, else EOS (Meta's original Llama files have no pad
    token), else 0. Padding is masked out everywhere, so its id never matters to the loss."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate[0] if isinstance(candidate, list) else candidate)
    return 0


def _collate(trajs: list[Trajectory], pad_id: int) -> RolloutBatch:
    length = max(len(t.context) for t in trajs)
    b = len(trajs)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    attention = torch.zeros((b, length), dtype=torch.long)
    loss_mask = torch.zeros((b, length), dtype=torch.long)
    response_mask = torch.zeros((b, length), dtype=torch.long)
    for i, t in enumerate(trajs):
        n, p = len(t.context), len(t.prompt_ids)
        input_ids[i, :n] = torch.tensor(t.context)
        attention[i, :n] = 1
        loss_mask[i, p:n] = torch.tensor(t.loss_mask, dtype=torch.long)
        response_mask[i, p:n] = 1
    prompt_lengths = torch.tensor([len(t.prompt_ids) for t in trajs])
    return RolloutBatch(input_ids, attention, loss_mask, prompt_lengths, trajs, response_mask)
