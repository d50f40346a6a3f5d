"""One model step over preallocated K/V buffers: the forward of the ``hf`` rollout backend.

``KVBuffers`` holds each layer's keys and values in tensors allocated once per decode batch,
(rows, kv_heads, capacity, head_dim). A step writes its tokens' K/V in place at columns
``[length, length + q)``, where transformers' ``DynamicCache`` concatenates and so copies the
whole cache at every token.

``step_function(model)`` returns ``step(ids, positions, valid, kv) -> logits`` of the last
position, for ``ids``/``positions`` (rows, q) and ``valid`` (rows, capacity), True on the key
columns holding a real token of the row. It advances ``kv.length`` by q.

- ``llama_step`` for Llama-layout decoders (``model_type`` llama or qwen2, full attention:
  LLaMA-3.x, Qwen2.5 and the tiny policy): the decoder run layer by layer over the model's own
  modules (embeddings, norms, projections, MLP, rotary embedding; LoRA-wrapped projections
  included), one SDPA call per layer. It leaves out the per-call work of the transformers forward
  (mask building, cache bookkeeping, output objects), which is most of a decode step's time for
  small models (bench/rl_speed.py).
- ``transformers_step`` for any other causal LM: the model's own forward, with a cache whose
  layers write into the buffers.

Both give the transformers forward's logits (tests/test_kv_forward.py). A query always attends to
its own column as well, so a padding query never sees an all-masked row (whose SDPA output is NaN).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicLayer

LLAMA_LAYOUT_TYPES = ("llama", "qwen2")

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "KVBuffers"], torch.Tensor]


@dataclass
class KVBuffers:
    """Per-layer K/V of a batch, (rows, kv_heads, capacity, head_dim); columns < ``length`` are
    filled. A layer's buffers are allocated at its first write, from the shape written."""

    rows: int
    capacity: int
    length: int = 0
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    def allocate(self, layer: int, like: torch.Tensor) -> None:
        """Buffers for ``layer`` shaped after ``like`` (rows, heads, n, dim); layers in order."""
        assert layer == len(self.keys), "layers are allocated in order"
        shape = (self.rows, like.shape[1], self.capacity, like.shape[-1])
        self.keys.append(like.new_zeros(shape))
        self.values.append(like.new_zeros(shape))

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store K/V (rows, heads, q, dim) at ``[length, length + q)``; the layer's K/V up to there."""
        end = self.length + keys.shape[-2]
        if end > self.capacity:
            raise ValueError(f"KV buffers hold {self.capacity} tokens; a step needs {end}")
        if layer == len(self.keys):
            self.allocate(layer, keys)
        self.keys[layer][:, :, self.length:end] = keys
        self.values[layer][:, :, self.length:end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (an index tensor on the buffers' device)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.rows = len(rows)

    def row(self, b: int, columns: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Row ``b``'s K/V on ``columns``, per layer (heads, n, dim)."""
        return [k[b][:, columns] for k in self.keys], [v[b][:, columns] for v in self.values]


def step_function(model) -> Step:
    """``llama_step`` when the model has the Llama layout, else ``transformers_step``. Parameters
    sharded by DeepSpeed ZeRO-3 are gathered only inside module calls, and ``llama_step`` reads
    the norms' weights directly: such models take ``transformers_step``."""
    causal_lm = unwrap(model)
    if has_llama_layout(causal_lm) and not zero3_sharded(causal_lm):
        return llama_step(causal_lm)
    return transformers_step(model)


def zero3_sharded(model) -> bool:
    """Whether DeepSpeed ZeRO-3 partitioned the model's parameters (they carry ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def unwrap(model):
    """The transformers model under peft (``get_base_model``) and DDP/accelerate (``module``) wrappers."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        else:
            return model


def has_llama_layout(causal_lm) -> bool:
    """Whether ``llama_step`` computes this model: a Llama/Qwen2 decoder with full attention on every layer."""
    config, decoder = causal_lm.config, getattr(causal_lm, "model", None)
    if getattr(config, "model_type", None) not in LLAMA_LAYOUT_TYPES or decoder is None:
        return False
    if not all(hasattr(decoder, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return False
    return all(getattr(layer.self_attn, "sliding_window", None) is None for layer in decoder.layers)


def attention_mask(valid: torch.Tensor, length: int, q: int) -> torch.Tensor:
    """(rows, 1, q, length + q) bool: query j (column ``length + j``) sees the row's real columns up
    to its own, and its own column always."""
    columns = torch.arange(length + q, device=valid.device)
    own = (length + torch.arange(q, device=valid.device))[:, None]
    return (valid[:, None, None, : length + q] & (columns <= own)) | (columns == own)


def llama_step(causal_lm) -> Step:
    """The decoder of a Llama-layout model, layer by layer over its modules, on ``KVBuffers``.
    Norms run as one ``F.rms_norm`` on the module's weight and epsilon (the module takes eight ops)."""
    decoder, lm_head = causal_lm.model, causal_lm.lm_head
    apply_rotary = importlib.import_module(type(causal_lm).__module__).apply_rotary_pos_emb

    def step(ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, kv: KVBuffers) -> torch.Tensor:
        rows, q = ids.shape
        mask = attention_mask(valid, kv.length, q)
        x = decoder.embed_tokens(ids)
        cos, sin = decoder.rotary_emb(x, positions)
        for i, layer in enumerate(decoder.layers):
            attn = layer.self_attn
            h = _rms_norm(layer.input_layernorm, x)
            heads = (rows, q, -1, attn.head_dim)
            query = attn.q_proj(h).view(heads).transpose(1, 2)
            key = attn.k_proj(h).view(heads).transpose(1, 2)
            value = attn.v_proj(h).view(heads).transpose(1, 2)
            query, key = apply_rotary(query, key, cos, sin)
            keys, values = kv.write(i, key, value)
            out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=attn.scaling,
                                                 enable_gqa=True)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(rows, q, -1))
            x = x + layer.mlp(_rms_norm(layer.post_attention_layernorm, x))
        kv.length += q
        return lm_head(_rms_norm(decoder.norm, x[:, -1]))

    return step


def _rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Llama/Qwen2 ``RMSNorm`` module's computation as one op."""
    return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)


class _BufferLayer(DynamicLayer):
    """A transformers cache layer that writes into (and reads from) one layer of ``KVBuffers``."""

    def __init__(self, kv: KVBuffers, index: int):
        super().__init__()
        self.kv, self.index, self.is_initialized = kv, index, True

    def update(self, key_states, value_states, *args, **kwargs):
        return self.kv.write(self.index, key_states, value_states)

    def get_seq_length(self) -> int:
        return self.kv.length


def transformers_step(model) -> Step:
    """The model's own forward on ``KVBuffers`` (through ``_BufferLayer``), for any causal LM."""
    config = unwrap(model).config.get_text_config()
    cache_arg = _cache_argument(model)

    def step(ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, kv: KVBuffers) -> torch.Tensor:
        cache = Cache(layers=[_BufferLayer(kv, i) for i in range(config.num_hidden_layers)])
        out = model(input_ids=ids, attention_mask=valid[:, : kv.length + ids.shape[1]].long(), position_ids=positions,
                    use_cache=True, logits_to_keep=1, **{cache_arg: cache})
        kv.length += ids.shape[1]
        return out.logits[:, -1]

    return step


def _cache_argument(model) -> str:
    """The forward keyword for the KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(unwrap(model).forward).parameters else "past_key_values"
