"""Turn generation with a transformers causal LM for the rollout loop (the ``hf`` backend).

``HFGenerator.generate(contexts, max_new_tokens, keys)`` continues every context by one turn
and stops each row at ``</search>``, ``</answer>`` or end of text. It is its own decode loop
rather than ``model.generate``, for what the multi-turn rollout makes expensive with
``generate`` (bench/rl_speed.py (a)):

1. **KV cache kept between turns.** A trajectory's next turn starts from its previous
   context plus the documents the engine appended. ``generate`` would prefill the whole
   context again every turn; here the cache of each key (one trajectory) is kept, and only
   the new tokens (the last sampled token and the observation) are run through the model.
   A kept cache is used only when its tokens are a prefix of the new context.
2. **Finished rows leave the batch.** ``generate`` decodes every row until the longest one
   stops. Here a row that stopped is cut out of the batch (its cache kept for the next turn)
   once a quarter of the batch has stopped, so the tail of a turn runs at a small batch. Only
   the rows past the new row count are moved (``KVBuffers.drop_rows``); kept caches are taken
   out, and put back next turn, with one gather/scatter per layer for all rows.
3. **Equal rows prefill once.** Rows with the same context and kept prefix (the n rollouts
   of one prompt, first turn) are run through the model once and copied.
4. **A cheaper step.** Each model call is ``kv_forward.step_function(model)``: K/V written in
   place into buffers sized for the turn (no cache concatenation per token) and, for
   Llama-layout models, the decoder over packed weights with a fraction of the transformers
   forward's ops. The loop runs under ``torch.inference_mode``.
5. **Cheaper sampling.** ``sample_categorical`` draws one uniform number per row (inverse
   CDF); ``torch.multinomial`` draws one exponential per vocabulary entry.

Rows are left-aligned to a shared width the usual way: each row's cached tokens and new
tokens are placed right-aligned, padding is not a real column, and position ids are given
explicitly (count of the row's real tokens), so gaps change nothing.
Greedy output equals ``model.generate`` (tests/test_generation.py).

Two options serve the in-process simulator (``zerosearch.search.local.InProcessCompleter``) and
change nothing when left at their defaults: ``generator`` (a ``torch.Generator`` the sampling
draws from instead of torch's global RNG) and ``stop_at_tags=False`` (rows stop at EOS or
``max_new_tokens`` only, not at ``</search>`` / ``</answer>``); ``top_k`` applies a top-k filter
between temperature and top-p, as ``model.generate`` orders them.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from zerosearch.lm.kv_forward import KVBuffers, step_function
from zerosearch.protocol import stop_markers

COMPACT_FRACTION = 0.25  # cut stopped rows out of the batch once this share of it has stopped


@dataclass
class _KeptCache:
    """K/V of one trajectory: ``tokens`` were run through the model; per layer (2, n, heads, dim)."""

    tokens: list[int]
    kv: list[torch.Tensor]

    def prefix_length(self, context: list[int]) -> int:
        """How many leading tokens of ``context`` this cache covers (0 when it does not match).
        At least one token is always left to run, to get the next-token logits."""
        n = len(self.tokens)
        if n == 0 or n > len(context) or context[:n] != self.tokens:
            return 0
        return min(n, len(context) - 1)


class HFGenerator:
    """``rollout.Generator`` over a transformers causal LM: batched, sampling or greedy, KV
    cache kept per trajectory key across turns (``reuse_cache``). ``generator``: the RNG sampling
    draws from (None: torch's global one); ``stop_at_tags=False``: stop at EOS or the token
    budget only; ``top_k`` > 0: keep the k likeliest tokens (0: all)."""

    def __init__(self, model, tokenizer, *, temperature: float = 1.0, top_p: float = 1.0, do_sample: bool = True,
                 reuse_cache: bool = True, dtype: torch.dtype | None = None,
                 generator: torch.Generator | None = None, stop_at_tags: bool = True, top_k: int = 0):
        self.model, self.tokenizer = model, tokenizer
        self.do_sample, self.temperature, self.reuse_cache = do_sample, temperature, reuse_cache
        self.generator = generator
        self.top_k = TopKLogitsWarper(top_k) if do_sample and top_k > 0 else None
        # nucleus sampling (the paper's 0.95); at 1.0 no warper, so sampling is the plain softmax draw
        self.top_p = TopPLogitsWarper(top_p) if do_sample and top_p < 1.0 else None
        self.stop_ids, self.stop_strings = stop_markers(tokenizer) if stop_at_tags else ([tokenizer.eos_token_id], [])
        self._can_end_stop: dict[int, bool] = {}  # token id -> its text holds a stop string's last character
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.step = step_function(model, dtype)  # dtype: the compute dtype of a Llama-layout decoder
        self._kept: dict[Hashable, _KeptCache] = {}

    @torch.inference_mode()  # cheaper per op than no_grad: no version counters, no autograd state
    def generate(self, contexts: Sequence[list[int]], max_new_tokens: int,
                 keys: Sequence[Hashable] | None = None) -> list[list[int]]:
        """New token ids per context, each ending with its stop token when it stopped on one.
        ``keys`` name the trajectory of each context so its KV cache is reused next turn;
        kept caches of keys not in this call are dropped."""
        contexts = [list(c) for c in contexts]
        if not contexts:
            return []
        keys = list(keys) if keys is not None and self.reuse_cache else [None] * len(contexts)
        kept = {k: self._kept[k] for k in keys if k is not None and k in self._kept}
        self._kept = {}
        starts = [(kept[k], kept[k].prefix_length(c)) if k in kept else (None, 0) for k, c in zip(keys, contexts)]
        batch = _Batch.prefill(self, contexts, starts, max_new_tokens)
        new: list[list[int]] = [[] for _ in contexts]
        running = list(range(len(contexts)))  # original row index per batch row
        while True:
            tokens = self._sample(batch.logits)
            stopped = []
            for b, (row, token) in enumerate(zip(running, tokens.tolist())):
                if batch.stopped[b]:
                    continue  # stopped earlier, waiting to be cut out of the batch
                new[row].append(token)
                if self._stops(new[row], max_new_tokens):
                    stopped.append(b)
            batch.mark_stopped(stopped)
            if batch.all_stopped or (batch.stopped_count >= max(1, COMPACT_FRACTION * len(running))):
                self._keep(batch, running, keys, contexts, new, only=batch.stopped_rows())
                if batch.all_stopped:
                    break
                keep = batch.drop_stopped()
                running, tokens = [running[i] for i in keep.tolist()], tokens[keep.to(tokens.device)]
            batch.decode(tokens)
        return new

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if not self.do_sample:
            return logits.argmax(-1)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        if self.top_k is not None:
            logits = self.top_k(None, logits)
        if self.top_p is not None:
            logits = self.top_p(None, logits)
        return sample_categorical(torch.softmax(logits, -1), self.generator)

    def _stops(self, ids: list[int], max_new: int) -> bool:
        if ids[-1] in self.stop_ids or len(ids) >= max_new:
            return True
        if self.stop_strings:
            return self._ends_stop_string(ids)
        return False

    def _ends_stop_string(self, ids: list[int]) -> bool:
        """Whether the text of ``ids`` holds a stop string, ``ids[:-1]``'s not holding one (the
        loop stops at the first): a new occurrence then ends in the last token. So only a last
        token whose own text holds a stop string's last character (``>``) is looked at, and
        then only the last tokens that can hold the longest stop string, one byte of text per
        token at least, are decoded. The same decisions as decoding the whole new text each
        step (tests/test_generation.py, the Qwen2.5 tokenizer, whose tags are several tokens)."""
        can_end = self._can_end_stop.get(ids[-1])
        if can_end is None:  # once per token id
            text = self.tokenizer.decode(ids[-1:])
            can_end = self._can_end_stop[ids[-1]] = any(s[-1] in text for s in self.stop_strings)
        if not can_end:
            return False
        window = max(len(s.encode()) for s in self.stop_strings)
        tail = self.tokenizer.decode(ids[-window:])
        return any(s in tail for s in self.stop_strings)

    def _keep(self, batch: _Batch, running: list[int], keys, contexts, new, only: list[int]) -> None:
        """Store the caches of batch rows ``only`` under their keys (tokens fed so far)."""
        only = [b for b in only if keys[running[b]] is not None]
        for b, kv in zip(only, batch.real_kv(only)):
            row = running[b]
            self._kept[keys[row]] = _KeptCache(contexts[row] + new[row][:-1], kv)


class _Batch:
    """The running decode batch: K/V buffers, which key columns are real, next positions, stopped flags."""

    def __init__(self, gen: HFGenerator, kv: KVBuffers, valid: torch.Tensor, positions: torch.Tensor,
                 logits: torch.Tensor):
        self.gen, self.kv, self.valid, self.positions, self.logits = gen, kv, valid, positions, logits
        self.stopped = torch.zeros(valid.shape[0], dtype=torch.bool)

    @classmethod
    def prefill(cls, gen: HFGenerator, contexts: list[list[int]], starts: list[tuple[_KeptCache | None, int]],
                max_new_tokens: int) -> _Batch:
        """Run every row's not-yet-cached tokens, right-aligned after its kept cache. Rows with the
        same context and kept prefix (the group of one prompt, first turn) run once and are copied.
        The buffers hold the prefill and ``max_new_tokens`` more columns, all a turn can need."""
        device = _device(gen.model)
        group_of: dict[tuple, int] = {}
        expand = [group_of.setdefault((tuple(c), n), len(group_of)) for c, (_, n) in zip(contexts, starts)]
        first_row: dict[int, int] = {}
        for i, g in enumerate(expand):
            first_row.setdefault(g, i)
        reps = list(first_row.values())  # one row per group, in group order
        contexts, starts = [contexts[i] for i in reps], [starts[i] for i in reps]
        rows, past = len(reps), max(n for _, n in starts)
        fresh = [c[n:] for c, (_, n) in zip(contexts, starts)]
        width = max(len(f) for f in fresh)
        kv = KVBuffers(rows, past + width + max_new_tokens)
        ids = torch.full((rows, width), gen.pad_id, dtype=torch.long)
        valid = torch.zeros((rows, kv.capacity), dtype=torch.bool)
        positions = torch.zeros((rows, width), dtype=torch.long)
        for i, (f, (_, n)) in enumerate(zip(fresh, starts)):
            ids[i, width - len(f):] = torch.tensor(f)
            valid[i, past - n: past] = True
            valid[i, past + width - len(f): past + width] = True
            positions[i, width - len(f):] = torch.arange(n, n + len(f))
        if past:
            _seed(kv, starts, past, device)
        valid = valid.to(device)
        logits = gen.step(ids.to(device), positions.to(device), valid, kv)
        next_pos = torch.tensor([len(c) for c in contexts], device=device)
        batch = cls(gen, kv, valid, next_pos, logits)
        if rows < len(expand):
            batch.select_rows(torch.tensor(expand))
        return batch

    def decode(self, tokens: torch.Tensor) -> None:
        """Feed one token per row; stopped rows get padding (not a real column) until they are cut out."""
        live = ~self.stopped.to(self.valid.device)
        self.valid[:, self.kv.length] = live
        ids = torch.where(live, tokens, torch.full_like(tokens, self.gen.pad_id))
        self.logits = self.gen.step(ids[:, None], self.positions[:, None], self.valid, self.kv)
        self.positions = self.positions + live.long()

    def mark_stopped(self, rows: list[int]) -> None:
        self.stopped[rows] = True

    @property
    def stopped_count(self) -> int:
        return int(self.stopped.sum())

    @property
    def all_stopped(self) -> bool:
        return bool(self.stopped.all())

    def stopped_rows(self) -> list[int]:
        return self.stopped.nonzero().flatten().tolist()

    def real_kv(self, rows: list[int]) -> list[list[torch.Tensor]]:
        """Each of batch rows ``rows``' K/V on its real columns, per layer (2, n, heads, dim); one
        gather per layer for all of them."""
        if not rows:
            return []
        index = torch.tensor(rows, device=self.valid.device)
        real = self.valid[index, : self.kv.length]
        row_of, column = real.nonzero(as_tuple=True)
        counts = real.sum(1).tolist()
        per_layer = [layer.split(counts, dim=1) for layer in self.kv.gather(index[row_of], column)]
        return [[layer[j] for layer in per_layer] for j in range(len(rows))]

    def drop_stopped(self) -> torch.Tensor:
        """Cut stopped rows out of the buffers and state; returns the old index of each row kept."""
        keep = self.kv.drop_rows(self.stopped)
        self._index_state(keep)
        return keep

    def select_rows(self, rows: torch.Tensor) -> None:
        """Make the batch rows ``rows`` of the current one (dropping or repeating rows)."""
        self.kv.select_rows(rows.to(self.valid.device))
        self._index_state(rows)

    def _index_state(self, rows: torch.Tensor) -> None:
        on_device = rows.to(self.valid.device)
        self.valid, self.positions, self.logits = (t[on_device] for t in (self.valid, self.positions, self.logits))
        self.stopped = self.stopped[rows]


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of ``probs`` (rows, n), drawn with probability ``probs`` (rows need not sum
    to 1 exactly): the inverse CDF at one uniform draw per row, from ``generator`` (None: torch's
    global RNG, ``torch.rand_like``). ``torch.multinomial`` draws an
    exponential per entry, which on CPU took 0.7 ms for 32 rows of 1024 (most of a decode step's
    sampling); this takes about 0.05 ms. A zero-probability entry is never drawn: the draw stays
    below the row's total, and the first CDF entry above it is one where the CDF rose."""
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    if not (torch.isfinite(total).all() and (total > 0).all()):
        raise ValueError("cannot sample: a row of next-token probabilities is not finite or sums to 0 "
                         "(NaN or -inf logits from the model)")
    draw = torch.rand_like(total) if generator is None else torch.rand(
        total.shape, generator=generator, dtype=total.dtype, device=total.device)
    u = torch.minimum(draw * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


def _seed(kv: KVBuffers, starts, past: int, device) -> None:
    """Fill ``kv``'s first ``past`` columns with each row's kept K/V, right-aligned: one scatter
    per layer for all rows."""
    template = next(c for c, n in starts if c is not None and n)
    kv.length = past  # the seeded columns, zeroed by allocate
    for layer, like in enumerate(template.kv):
        kv.allocate(layer, like.to(device))
    rows, columns, values = [], [], [[] for _ in template.kv]
    for i, (kept, n) in enumerate(starts):
        if kept is not None and n:
            rows.append(torch.full((n,), i))
            columns.append(torch.arange(past - n, past))
            for layer, layer_kv in enumerate(kept.kv):
                values[layer].append(layer_kv[:, :n])
    kv.scatter(torch.cat(rows).to(device), torch.cat(columns).to(device),
               [torch.cat(v, dim=1).to(device) for v in values])


def _device(model) -> torch.device:
    return next(model.parameters()).device
