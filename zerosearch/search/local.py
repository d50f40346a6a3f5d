"""In-process simulator backends: a transformers model behind the ``Completer`` interface.

``InProcessCompleter`` is ``simulator.backend: inprocess`` (the CPU default): the simulator
model in the trainer's own process, decoded by the policy's fast loop (``HFGenerator``), with
an RNG of its own reseeded on every call, so a search call's documents are a function of its
seed alone and torch's global RNG (the policy's sampling stream) is never touched. No HTTP,
no JSON, no second process competing for the cores.

It samples as ``transformers serve`` does for a ``/v1/completions`` request (what the served
CPU path used): the prompt tokenized with the tokenizer's defaults (``add_special_tokens``
on, a no-op for Qwen2-style tokenizers, which add no BOS), ``do_sample`` / ``top_k`` from the
model's ``generation_config``, the request's temperature (0: greedy) and top_p (None: the
generation config's), stopped at EOS or ``max_tokens``, decoded with special tokens skipped.
What differs: the random stream (an inverse-CDF draw per row from this completer's generator,
where the server draws ``torch.multinomial`` from its global RNG), the forward's
floating-point order (``kv_forward``'s packed decoder against the server's paged attention),
and a ``repetition_penalty`` in the generation config, which is not applied (logged).

``LocalCompleter`` (``model.generate``, the global RNG) is what the benches compare with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch

from zerosearch.lm.generation import HFGenerator
from zerosearch.lm.models import left_pad
from zerosearch.search.curriculum import mix_seed

log = logging.getLogger(__name__)


class InProcessCompleter:
    """Completes prompts with ``HFGenerator`` over ``model``, all prompts of a call in one batch
    (finished rows leave it). ``seed`` (per call, from the engine) reseeds the completer's own
    ``torch.Generator`` with ``mix_seed(seed, rank)``; None continues its stream (seeded with
    ``rank`` at construction). ``api="chat"`` sends each prompt as one user message through the
    tokenizer's chat template, after ``system_message`` unless it is None (as ``SimulatorClient``)."""

    def __init__(self, model, tokenizer, *, rank: int = 0, api: Literal["completions", "chat"] = "completions",
                 system_message: str | None = None):
        if api not in ("completions", "chat"):
            raise ValueError(f"api must be 'completions' or 'chat', got {api!r}")
        if api == "completions" and system_message is not None:
            raise ValueError("a system message needs api='chat' (a raw completion has no messages)")
        if api == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError("simulator.api: chat in process needs a tokenizer with a chat template; this "
                             "simulator's has none (use api: completions)")
        self.model, self.tokenizer, self.rank = model.eval(), tokenizer, rank
        self.api, self.system_message = api, system_message
        device = next(model.parameters()).device
        self.rng = torch.Generator(device=device)
        self.rng.manual_seed(mix_seed(0, rank))
        config = getattr(model, "generation_config", None)
        self.do_sample = bool(getattr(config, "do_sample", True))
        self.top_k = int(getattr(config, "top_k", 0) or 0)
        self.default_top_p = float(getattr(config, "top_p", 1.0) or 1.0)
        if float(getattr(config, "repetition_penalty", 1.0) or 1.0) != 1.0:
            log.warning("the simulator's generation_config sets repetition_penalty=%s; the in-process "
                        "backend does not apply it (a server would)", config.repetition_penalty)
        self._generators: dict[tuple[float, float], HFGenerator] = {}

    def encode(self, prompt: str) -> list[int]:
        """The token ids the model continues: the raw prompt, or the chat template's rendering."""
        if self.api == "completions":
            return self.tokenizer(prompt)["input_ids"]
        system = [] if self.system_message is None else [{"role": "system", "content": self.system_message}]
        text = self.tokenizer.apply_chat_template([*system, {"role": "user", "content": prompt}],
                                                  tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _generator(self, temperature: float, top_p: float) -> HFGenerator:
        key = (temperature, top_p)
        if key not in self._generators:  # built once: the decoder's packed weights
            sample = self.do_sample and temperature > 0
            self._generators[key] = HFGenerator(
                self.model, self.tokenizer, temperature=temperature if sample else 1.0, top_p=top_p,
                do_sample=sample, reuse_cache=False, generator=self.rng, stop_at_tags=False,
                top_k=self.top_k)
        return self._generators[key]

    def complete(self, prompts: Sequence[str], *, max_tokens: int, temperature: float,
                 top_p: float | None = 1.0, seed: int | None = None) -> list[str]:
        if not prompts:
            return []
        if seed is not None:
            self.rng.manual_seed(mix_seed(seed, self.rank))
        gen = self._generator(float(temperature), self.default_top_p if top_p is None else float(top_p))
        new = gen.generate([self.encode(p) for p in prompts], max_tokens)
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)



class LocalCompleter:
    """Completes prompts with ``model.generate`` in batches of ``batch_size``."""

    def __init__(self, model, tokenizer, *, batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @torch.no_grad()
    def complete(self, prompts: Sequence[str], *, max_tokens: int, temperature: float,
                 top_p: float | None = 1.0, seed: int | None = None) -> list[str]:
        if seed is not None:
            torch.manual_seed(seed)
        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            out.extend(self._batch(prompts[i : i + self.batch_size], max_tokens, temperature, top_p))
        return out

    def _batch(self, prompts: Sequence[str], max_tokens: int, temperature: float, top_p: float | None) -> list[str]:
        ids, mask = left_pad([self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts], self.pad_id)
        width = ids.shape[1]
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0 else {"do_sample": False}
        if sampling.get("top_p", 0) is None:  # not given: the model's generation config decides
            del sampling["top_p"]
        device = next(self.model.parameters()).device
        gen = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_tokens,
                                  pad_token_id=self.pad_id, eos_token_id=self.tokenizer.eos_token_id, **sampling)
        return self.tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
