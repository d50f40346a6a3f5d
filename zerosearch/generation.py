"""Turn generation with a transformers causal LM for the rollout loop (the ``hf`` backend).

``HFGenerator.generate(contexts, max_new_tokens, keys)`` continues every context by one turn
and stops each row at ``</search>``, ``</answer>`` or end of text. It is its own decode loop
over ``model(...)`` rather than ``model.generate`` for two reasons the multi-turn rollout
makes expensive with ``generate`` (bench/rl_speed.py (a)):

1. **KV cache kept between turns.** A trajectory's next turn starts from its previous
   context plus the documents the engine appended. ``generate`` would prefill the whole
   context again every turn; here the cache of each key (one trajectory) is kept, and only
   the new tokens (the last sampled token and the observation) are run through the model.
   A kept cache is used only when its tokens are a prefix of the new context.
2. **Finished rows leave the batch.** ``generate`` decodes every row until the longest one
   stops. Here a row that stopped is cut out of the batch (its cache kept for the next turn)
   once a quarter of the batch has stopped, so the tail of a turn runs at a small batch.

Rows are left-aligned to a shared width the usual way: each row's cached tokens and new
tokens are placed right-aligned, padding carries attention mask 0, and position ids are
given explicitly (count of the row's real tokens), so gaps in the mask change nothing.
Greedy output equals ``model.generate`` (tests/test_generation.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import TopPLogitsWarper

from zerosearch.rollout import stop_markers

COMPACT_FRACTION = 0.25  # cut stopped rows out of the batch once this share of it has stopped


@dataclass
class _KeptCache:
    """K/V of one trajectory: ``tokens`` were run through the model; per layer (heads, n, dim)."""

    tokens: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    def prefix_length(self, context: list[int]) -> int:
        """How many leading tokens of ``context`` this cache covers (0 when it does not match).
        At least one token is always left to run, to get the next-token logits."""
        n = len(self.tokens)
        if n == 0 or n > len(context) or context[:n] != self.tokens:
            return 0
        return min(n, len(context) - 1)


class HFGenerator:
    """``rollout.Generator`` over a transformers causal LM: batched, sampling or greedy, KV
    cache kept per trajectory key across turns (``reuse_cache``)."""

    def __init__(self, model, tokenizer, *, temperature: float = 1.0, top_p: float = 1.0, do_sample: bool = True,
                 reuse_cache: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.do_sample, self.temperature, self.reuse_cache = do_sample, temperature, reuse_cache
        self.top_p = TopPLogitsWarper(top_p) if do_sample and top_p < 1.0 else None
        self.stop_ids, self.stop_strings = stop_markers(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._cache_arg = _cache_argument(model)
        self._kept: dict[Hashable, _KeptCache] = {}

    @torch.no_grad()
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
        batch = _Batch.prefill(self, contexts, starts)
        new: list[list[int]] = [[] for _ in contexts]
        running = list(range(len(contexts)))  # original row index per batch row
        while True:
            tokens = self._sample(batch.logits)
            stopped = []
            for b, row in enumerate(running):
                if batch.stopped[b]:
                    continue  # stopped earlier, waiting to be cut out of the batch
                new[row].append(int(tokens[b]))
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
        logits = logits / self.temperature
        if self.top_p is not None:
            logits = self.top_p(None, logits)
        return torch.multinomial(torch.softmax(logits, -1), 1).squeeze(-1)

    def _stops(self, ids: list[int], max_new: int) -> bool:
        if ids[-1] in self.stop_ids or len(ids) >= max_new:
            return True
        if self.stop_strings:
            tail = self.tokenizer.decode(ids[-12:])
            return any(s in tail for s in self.stop_strings)
        return False

    def _keep(self, batch: _Batch, running: list[int], keys, contexts, new, only: list[int]) -> None:
        """Store the caches of batch rows ``only`` under their keys (tokens fed so far)."""
        for b in only:
            row = running[b]
            if keys[row] is None:
                continue
            k, v = batch.row_cache(b)
            self._kept[keys[row]] = _KeptCache(contexts[row] + new[row][:-1], k, v)


class _Batch:
    """The running decode batch: cache, attention mask, next positions, stopped flags."""

    def __init__(self, gen: HFGenerator, cache: DynamicCache, mask: torch.Tensor, positions: torch.Tensor,
                 logits: torch.Tensor):
        self.gen, self.cache, self.mask, self.positions, self.logits = gen, cache, mask, positions, logits
        self.stopped = torch.zeros(mask.shape[0], dtype=torch.bool)

    @classmethod
    def prefill(cls, gen: HFGenerator, contexts: list[list[int]], starts: list[tuple[_KeptCache | None, int]]) -> _Batch:
        """Run every row's not-yet-cached tokens, right-aligned after its kept cache."""
        device = _device(gen.model)
        rows = len(contexts)
        past = max(n for _, n in starts)
        fresh = [c[n:] for c, (_, n) in zip(contexts, starts)]
        width = max(len(f) for f in fresh)
        ids = torch.full((rows, width), gen.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, past + width), dtype=torch.long)
        positions = torch.zeros((rows, width), dtype=torch.long)
        for i, (f, (_, n)) in enumerate(zip(fresh, starts)):
            ids[i, width - len(f):] = torch.tensor(f)
            mask[i, past - n: past] = 1
            mask[i, past + width - len(f):] = 1
            positions[i, width - len(f):] = torch.arange(n, n + len(f))
        cache = DynamicCache()
        if past:
            _seed_cache(cache, starts, past, rows, device)
        out = gen.model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                        use_cache=True, logits_to_keep=1, **{gen._cache_arg: cache})
        next_pos = torch.tensor([len(c) for c in contexts])
        return cls(gen, cache, mask, next_pos, out.logits[:, -1])  # the model filled ``cache`` in place

    def decode(self, tokens: torch.Tensor) -> None:
        """Feed one token per row; stopped rows get padding (mask 0) until they are cut out."""
        device = _device(self.gen.model)
        live = (~self.stopped).long()
        ids = torch.where(self.stopped, torch.full_like(tokens, self.gen.pad_id), tokens.cpu())
        self.mask = torch.cat([self.mask, live[:, None]], dim=1)
        out = self.gen.model(input_ids=ids[:, None].to(device), attention_mask=self.mask.to(device),
                             position_ids=self.positions[:, None].to(device), use_cache=True, logits_to_keep=1,
                             **{self.gen._cache_arg: self.cache})
        self.positions = self.positions + live
        self.logits = out.logits[:, -1]

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

    def row_cache(self, b: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Row ``b``'s K/V on its real (attended) positions, per layer (heads, n, dim)."""
        cols = self.mask[b].nonzero().flatten().to(_device(self.gen.model))
        return ([layer.keys[b][:, cols] for layer in self.cache.layers],
                [layer.values[b][:, cols] for layer in self.cache.layers])

    def drop_stopped(self) -> torch.Tensor:
        """Cut stopped rows out of the cache and state; returns the indices of the rows kept."""
        keep = (~self.stopped).nonzero().flatten()
        on_device = keep.to(_device(self.gen.model))
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[on_device], layer.values[on_device]
        self.mask, self.positions, self.logits = self.mask[keep], self.positions[keep], self.logits[on_device]
        self.stopped = self.stopped[keep]
        return keep


def _seed_cache(cache: DynamicCache, starts, past: int, rows: int, device) -> None:
    """Fill ``cache`` with each row's kept K/V, right-aligned to ``past`` columns."""
    template = next(c for c, n in starts if c is not None and n)
    for layer, (k0, v0) in enumerate(zip(template.keys, template.values)):
        keys = k0.new_zeros((rows, k0.shape[0], past, k0.shape[-1]))
        values = v0.new_zeros((rows, v0.shape[0], past, v0.shape[-1]))
        for i, (kept, n) in enumerate(starts):
            if kept is not None and n:
                keys[i, :, past - n:] = kept.keys[layer][:, :n]
                values[i, :, past - n:] = kept.values[layer][:, :n]
        cache.update(keys.to(device), values.to(device), layer)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _cache_argument(model) -> str:
    """The forward keyword for the KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    inner = model
    while True:
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        elif hasattr(inner, "module") and isinstance(inner.module, torch.nn.Module):
            inner = inner.module
        else:
            break
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"
