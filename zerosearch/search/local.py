"""An in-process simulator backend: a transformers model behind the ``Completer`` interface.

Used where no server is wanted (tests, benches, quick checks); training and evaluation
serve the simulator over HTTP (``zerosearch.serving``) so the same client code reaches
``transformers serve``, sglang and vLLM.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zerosearch.lm.models import left_pad


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
