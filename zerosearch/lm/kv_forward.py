"""One model step over preallocated K/V buffers: the forward of the ``hf`` rollout backend.

``KVBuffers`` holds each layer's keys and values in one tensor allocated once per decode batch,
(2, rows, capacity, kv_heads, head_dim). A step writes its tokens' K/V in place at columns
``[length, length + q)``, where transformers' ``DynamicCache`` concatenates and so copies the
whole cache at every token.

``step_function(model)`` returns ``step(ids, positions, valid, kv) -> logits`` of the last
position, for ``ids``/``positions`` (rows, q) and ``valid`` (rows, capacity), True on the key
columns holding a real token of the row. It advances ``kv.length`` by q.

- ``llama_step`` for Llama-layout decoders (``model_type`` llama or qwen2, full attention, a
  rotary embedding fixed per position: LLaMA-3.x, Qwen2.5 and the tiny policy). For small models
  a decode step's time is mostly the number of ops, so it runs the decoder over packed weights
  (``pack_llama``, LoRA adapters merged): per layer one matmul for q, k, v and the rotated halves
  of q and k (rotary's ``rotate_half`` is a signed permutation of output rows), one SDPA call with
  a K/V head's query heads as its query rows (no K/V repeat), one matmul for gate and up, and the
  residuals added inside the o/down matmuls. A prefill runs the linear layers on its real tokens
  only. The packed weights are a copy of the layer weights (q and k twice), made again whenever
  a parameter changed.
- ``transformers_step`` for any other causal LM: the model's own forward, with a cache whose
  layers write into the buffers.

Both give the transformers forward's logits (tests/test_kv_forward.py). A query always attends to
its own column as well, so a padding query never sees an all-masked row (whose SDPA output is NaN).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicLayer

LLAMA_LAYOUT_TYPES = ("llama", "qwen2")

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "KVBuffers"], torch.Tensor]


@dataclass
class KVBuffers:
    """Per-layer K/V of a batch in one tensor, (2, rows, capacity, kv_heads, head_dim): keys at 0,
    values at 1; columns < ``length`` are filled. Token-major, so the K/V of a (row, column) is one
    contiguous block (cheap to gather, scatter and write); attention reads it as a strided
    (rows, heads, n, dim) view. A layer's buffer is allocated at its first write, from the shape
    written. A column is only read once written: every step writes all rows' columns
    ``[length, length + q)`` before attending to ``[0, length + q)``, and seeded columns start at
    zero (a gap is masked, and must not be NaN: 0 * NaN is NaN)."""

    rows: int
    capacity: int
    length: int = 0
    layers: list[torch.Tensor] = field(default_factory=list)

    def allocate(self, layer: int, like: torch.Tensor) -> None:
        """The buffer for ``layer`` with the heads, dim, dtype and device of ``like`` (..., heads, dim);
        layers in order. Columns < ``length`` start at zero (they are seeded, gaps included); the
        others are written before they are read."""
        assert layer == len(self.layers), "layers are allocated in order"
        buffer = like.new_empty((2, self.rows, self.capacity, *like.shape[-2:]))
        buffer[:, :, : self.length].zero_()
        self.layers.append(buffer)

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store K/V (rows, q, heads, dim) at ``[length, length + q)``; the layer's K/V up to there,
        (rows, heads, length + q, dim) views."""
        end = self.length + keys.shape[1]
        if end > self.capacity:
            raise ValueError(f"KV buffers hold {self.capacity} tokens; a step needs {end}")
        if layer == len(self.layers):
            self.allocate(layer, keys)
        buffer = self.layers[layer]
        buffer[0, :, self.length:end] = keys
        buffer[1, :, self.length:end] = values
        return buffer[0, :, :end].transpose(1, 2), buffer[1, :, :end].transpose(1, 2)

    def select_rows(self, rows: torch.Tensor) -> None:
        """Make the buffers hold batch rows ``rows`` (an index tensor on the buffers' device; rows may
        repeat). Only the filled columns are copied: the rest is written before it is read."""
        selected = []
        for buffer in self.layers:
            new = buffer.new_empty((buffer.shape[0], len(rows), *buffer.shape[2:]))
            new[:, :, : self.length] = buffer[:, rows, : self.length]
            selected.append(new)
        self.layers, self.rows = selected, len(rows)

    def drop_rows(self, dropped: torch.Tensor) -> torch.Tensor:
        """Drop the rows flagged in ``dropped`` (bool, rows): the rows kept that sit past the new row
        count move into the dropped rows' places, then the buffers are narrowed (a view), so only
        the moved rows are copied. Returns the old index of each row kept, in its new order."""
        kept = (~dropped).nonzero().flatten()
        n = len(kept)
        holes, movers = dropped[:n].nonzero().flatten(), kept[kept >= n]
        order = torch.arange(n)
        order[holes] = movers
        if len(holes):
            holes, movers = holes.to(self.layers[0].device), movers.to(self.layers[0].device)
            for buffer in self.layers:
                buffer[:, holes] = buffer[:, movers]
        self.layers = [buffer[:, :n] for buffer in self.layers]
        self.rows = n
        return order

    def gather(self, rows: torch.Tensor, columns: torch.Tensor) -> list[torch.Tensor]:
        """K/V at the (row, column) pairs ``zip(rows, columns)``, per layer (2, pairs, heads, dim)."""
        return [buffer[:, rows, columns] for buffer in self.layers]

    def scatter(self, rows: torch.Tensor, columns: torch.Tensor, values: list[torch.Tensor]) -> None:
        """Write per-layer K/V (2, pairs, heads, dim) at the (row, column) pairs (``gather``'s inverse)."""
        for buffer, layer_values in zip(self.layers, values, strict=True):
            buffer[:, rows, columns] = layer_values


def step_function(model, dtype: torch.dtype | None = None) -> Step:
    """``llama_step`` (computing in ``dtype``, None: the weights' own) when the model has the
    Llama layout, else ``transformers_step`` (in the weights' dtype). Parameters sharded by
    DeepSpeed ZeRO-3 are gathered only inside module calls, and ``llama_step`` reads the norms'
    weights directly: such models take ``transformers_step``."""
    causal_lm = unwrap(model)
    if has_llama_layout(causal_lm) and not zero3_sharded(causal_lm):
        return llama_step(causal_lm, dtype)
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
    rope_type = getattr(decoder.rotary_emb, "rope_type", "default")
    if not isinstance(rope_type, str) or "dynamic" in rope_type or rope_type == "longrope":
        return False  # cos/sin of a position depend on the sequence length (or the layer): no fixed table
    return all(getattr(layer.self_attn, "sliding_window", None) is None for layer in decoder.layers)


def attention_mask(valid: torch.Tensor, length: int, q: int) -> torch.Tensor:
    """(rows, 1, q, length + q) bool: query j (column ``length + j``) sees the row's real columns up
    to its own, and its own column always."""
    columns = torch.arange(length + q, device=valid.device)
    own = (length + torch.arange(q, device=valid.device))[:, None]
    return (valid[:, None, None, : length + q] & (columns <= own)) | (columns == own)


def _grouped_mask(valid: torch.Tensor, length: int, q: int, group: int, like: torch.Tensor) -> torch.Tensor:
    """``attention_mask`` as an additive mask (0 / -inf, ``like``'s dtype) for query rows ordered
    (head in group, position): (rows, 1, group * q, length + q)."""
    if q == 1:  # a decode step: the row's real columns and its own; the same for every head
        seen = valid[:, None, None, : length + 1].clone()
        seen[..., -1] = True
    else:
        seen = attention_mask(valid, length, q).repeat(1, 1, group, 1)
    return like.new_zeros(seen.shape).masked_fill_(~seen, float("-inf"))


def llama_step(causal_lm, dtype: torch.dtype | None = None) -> Step:
    """The decoder of a Llama-layout model on ``KVBuffers``, over packed weights (``pack_llama``):
    per layer one matmul for q, k, v and the rotated halves of q and k, one SDPA call with each
    K/V head's query heads as its query rows (no K/V repeat), one matmul for gate and up, and the
    residual adds inside the o/down matmuls. The weights are packed again whenever a parameter
    changed (an optimizer step, a new device) since the last pack.

    ``dtype``: the compute dtype (bf16 when training's mixed precision is: the trainable weights
    are fp32, and autocast does not reach these direct ops); the packed weights, embedding, norms
    and head are cast to it. None: the weights' own dtype."""
    decoder = causal_lm.model
    config, attn = causal_lm.config, decoder.layers[0].self_attn
    heads, kv_heads, dim, scale = config.num_attention_heads, config.num_key_value_heads, attn.head_dim, attn.scaling
    group, qk_heads = heads // kv_heads, heads + kv_heads
    params = list(causal_lm.parameters())
    act = decoder.layers[0].mlp.act_fn
    act = F.silu if type(act).__name__ in ("SiLU", "SiLUActivation") else act
    packed: dict = {}

    def current() -> tuple[list[_PackedLayer], _RotaryTable, _PackedEnds]:
        state = [(p.data_ptr(), p._version) for p in params]
        if packed.get("state") != state:
            packed.update(state=state, layers=pack_llama(causal_lm, dtype), rotary=_RotaryTable(decoder.rotary_emb),
                          ends=_PackedEnds.of(causal_lm, dtype))
        return packed["layers"], packed["rotary"], packed["ends"]

    def step(ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, kv: KVBuffers) -> torch.Tensor:
        layers, rotary, (embed, final_norm, lm_head) = current()
        rows, q = ids.shape
        fresh = valid[:, kv.length: kv.length + q]
        real = None  # a prefill's linear layers run on its real tokens only; attention on the padded grid
        if q > 1:
            if not fresh[:, -1].all():
                raise ValueError("llama_step: in a prefill every row's last column must be a real token")
            real = fresh.reshape(-1).nonzero().flatten()
        x = embed(ids.reshape(-1) if real is None else ids.reshape(-1)[real])
        cos, sin = rotary(positions.reshape(-1) if real is None else positions.reshape(-1)[real], x)
        mask = _grouped_mask(valid, kv.length, q, group, x)
        for i, layer in enumerate(layers):
            h = _rms_norm(x, layer.input_norm)
            proj = torch.addmm(layer.qkv_bias, h, layer.qkv).view(len(x), -1, dim)
            qk = torch.addcmul(proj[:, :qk_heads] * cos, proj[:, qk_heads + kv_heads:], sin)  # rotary embedding
            qk = _on_grid(qk, real, rows * q).view(rows, q, qk_heads, dim)
            value = _on_grid(proj[:, qk_heads: qk_heads + kv_heads], real, rows * q).view(rows, q, kv_heads, dim)
            keys, values = kv.write(i, qk[:, :, heads:], value)
            query = qk[:, :, :heads].transpose(1, 2).reshape(rows, kv_heads, group * q, dim)
            out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale)
            out = out.view(rows, heads, q, dim).transpose(1, 2).reshape(rows * q, heads * dim)
            x = _addmm(x, out if real is None else out[real], layer.o, layer.o_bias)
            h = _rms_norm(x, layer.post_norm)
            gate, up = torch.addmm(layer.gate_up_bias, h, layer.gate_up).chunk(2, -1)
            x = _addmm(x, act(gate) * up, layer.down, layer.down_bias)
        kv.length += q
        if real is not None:
            x = x[fresh.sum(1).cumsum(0) - 1]  # each row's last token
        return lm_head(_rms_norm(x, final_norm))

    return step


Norm = tuple[torch.Tensor, float]  # an RMS norm's weight and epsilon


def _rms_norm(x: torch.Tensor, norm: Norm) -> torch.Tensor:
    return F.rms_norm(x, norm[0].shape, norm[0], norm[1])


def _norm(module: torch.nn.Module, dtype: torch.dtype | None) -> Norm:
    return _cast(module.weight, dtype), module.variance_epsilon


def _cast(t: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    """``t`` in ``dtype`` (itself when it already is, or when ``dtype`` is None)."""
    return t if t is None or dtype is None else t.to(dtype)


class _PackedEnds(tuple):
    """(embed, final norm, lm_head) of a Llama-layout model for ``llama_step``, in ``dtype``."""

    @classmethod
    def of(cls, causal_lm, dtype: torch.dtype | None) -> _PackedEnds:
        # The plain modules' functions, called directly (a module call costs more than these small ops).
        embed = _direct(causal_lm.model.embed_tokens, torch.nn.Embedding,
                        lambda m: partial(F.embedding, weight=_cast(m.weight, dtype)), dtype)
        lm_head = _direct(causal_lm.lm_head, torch.nn.Linear,
                          lambda m: partial(F.linear, weight=_cast(m.weight, dtype), bias=_cast(m.bias, dtype)), dtype)
        return cls((embed, _norm(causal_lm.model.norm, dtype), lm_head))


@dataclass
class _PackedLayer:
    """One decoder layer's weights laid out for ``llama_step``, (in, out) for ``addmm``."""

    qkv: torch.Tensor  # projections to q, k, v, rotate_half(q), rotate_half(k)
    qkv_bias: torch.Tensor
    o: torch.Tensor
    o_bias: torch.Tensor | None
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor
    down: torch.Tensor
    down_bias: torch.Tensor | None
    input_norm: Norm
    post_norm: Norm


@torch.no_grad()
def pack_llama(causal_lm, dtype: torch.dtype | None = None) -> list[_PackedLayer]:
    """Each layer's projections as computed now (LoRA adapters merged), packed for ``llama_step``,
    in ``dtype`` (None: the weights' own). A copy of the layer weights, with q and k twice: rotary
    embedding's ``rotate_half`` is a signed permutation of output rows, so it is folded into the
    projection."""
    packed = []
    for layer in causal_lm.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        dim = attn.head_dim
        (wq, bq), (wk, bk), (wv, bv) = (linear_weights(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
        (wo, bo), (wg, bg), (wu, bu), (wd, bd) = (linear_weights(m) for m in (attn.o_proj, mlp.gate_proj,
                                                                              mlp.up_proj, mlp.down_proj))
        bq, bk, bv, bg, bu = (b if b is not None else w.new_zeros(w.shape[0])
                              for w, b in ((wq, bq), (wk, bk), (wv, bv), (wg, bg), (wu, bu)))
        packed.append(_PackedLayer(
            qkv=_cast(torch.cat([wq, wk, wv, _rotate_half_rows(wq, dim), _rotate_half_rows(wk, dim)]).t(), dtype)
            .contiguous(),
            qkv_bias=_cast(torch.cat([bq, bk, bv, _rotate_half_rows(bq, dim), _rotate_half_rows(bk, dim)]), dtype),
            o=_cast(wo.t(), dtype).contiguous(), o_bias=_cast(bo, dtype),
            gate_up=_cast(torch.cat([wg, wu]).t(), dtype).contiguous(), gate_up_bias=_cast(torch.cat([bg, bu]), dtype),
            down=_cast(wd.t(), dtype).contiguous(), down_bias=_cast(bd, dtype),
            input_norm=_norm(layer.input_layernorm, dtype), post_norm=_norm(layer.post_attention_layernorm, dtype)))
    return packed


def linear_weights(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (out, in) weight and the bias that a linear module applies. An ``nn.Linear`` gives its
    own; any other (a LoRA-wrapped one) is read off its output on the identity and on zero, in its
    current mode (generation runs in eval mode: no dropout)."""
    if type(module) is torch.nn.Linear:
        return module.weight, module.bias
    eye = torch.eye(module.in_features, dtype=module.weight.dtype, device=module.weight.device)
    bias = module(torch.zeros_like(eye[:1]))[0]
    return (module(eye) - bias).t(), (bias if bias.any() else None)


def _rotate_half_rows(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Rows of ``w`` (per head of ``dim`` rows) such that ``x @ result.T == rotate_half(x @ w.T)``."""
    per_head = w.reshape(-1, dim, *w.shape[1:])
    return torch.cat((-per_head[:, dim // 2:], per_head[:, : dim // 2]), 1).reshape(w.shape)


def _direct(module: torch.nn.Module, plain: type, function: Callable, dtype: torch.dtype | None) -> Callable:
    """``function(module)`` when ``module`` is exactly of type ``plain`` (not a LoRA or other
    wrapper), else the module itself (its input in its own dtype, its output in ``dtype``)."""
    if type(module) is plain:
        return function(module)
    if dtype is None:
        return module
    own = next(module.parameters()).dtype
    return lambda x: module(x if not x.is_floating_point() else x.to(own)).to(dtype)


def _on_grid(t: torch.Tensor, real: torch.Tensor | None, size: int) -> torch.Tensor:
    """``t`` (one entry per real token) placed on the padded (rows * q) grid at ``real``, zeros
    elsewhere; ``t`` itself when every grid position is a token (``real`` is None)."""
    if real is None:
        return t
    return t.new_zeros((size, *t.shape[1:])).index_copy_(0, real, t)


def _addmm(x: torch.Tensor, a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x + a @ w (+ bias)``: a residual add inside the matmul."""
    out = torch.addmm(x, a, w)
    return out if bias is None else out + bias


class _RotaryTable:
    """cos/sin of the model's rotary embedding per position, computed once up to the largest
    position asked for (doubling), looked up per step."""

    def __init__(self, rotary_emb: torch.nn.Module):
        self.rotary_emb, self.cos, self.sin = rotary_emb, None, None

    def __call__(self, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for ``positions`` (any shape), shaped (*positions.shape, 1, dim), in ``like``'s dtype."""
        needed = int(positions.max()) + 1
        if self.cos is None or self.cos.shape[0] < needed:
            size = max(needed, 2 * (0 if self.cos is None else self.cos.shape[0]), 256)
            cos, sin = self.rotary_emb(like, torch.arange(size, device=like.device)[None])
            self.cos, self.sin = cos[0], sin[0]
        return self.cos[positions].unsqueeze(-2), self.sin[positions].unsqueeze(-2)


class _BufferLayer(DynamicLayer):
    """A transformers cache layer that writes into (and reads from) one layer of ``KVBuffers``."""

    def __init__(self, kv: KVBuffers, index: int):
        super().__init__()
        self.kv, self.index, self.is_initialized = kv, index, True

    def update(self, key_states, value_states, *args, **kwargs):
        return self.kv.write(self.index, key_states.transpose(1, 2), value_states.transpose(1, 2))

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
