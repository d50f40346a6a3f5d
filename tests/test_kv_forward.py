"""The hf backend's model step over KV buffers: ``llama_step`` and ``transformers_step`` must give
the logits of the model's own forward, for padded batches, over prefill and decode steps."""

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from zerosearch.config import LoraSection
from zerosearch.lm.kv_forward import (
    KVBuffers,
    attention_mask,
    has_llama_layout,
    linear_weights,
    llama_step,
    step_function,
    transformers_step,
)
from zerosearch.lm.models import with_lora

VOCAB = 97


def qwen2(**extra):
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=128, **extra)).eval()


def llama(**extra):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=128, **extra)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)  # biases start at zero; make them count
    return model


def llama3_with_biases():
    """Llama 3 rope scaling (fixed per position), and biases on every projection."""
    return llama(attention_bias=True, mlp_bias=True, rope_parameters={
        "rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 4})


def gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128)).eval()


ROWS = [[5, 9, 13, 2, 40, 41], [7, 8], [60, 61, 62, 63]]  # different lengths: left padding in the batch


def reference_logits(model, tokens: list[int]) -> torch.Tensor:
    """Last-position logits of the model's own forward on one unpadded row."""
    return model(input_ids=torch.tensor([tokens])).logits[0, -1]


@torch.no_grad()
def run_steps(step, rows, decode: list[list[int]]):
    """Prefill ``rows`` left-padded, then one decode step per entry of ``decode`` (a token per row);
    returns the logits after each step."""
    width = max(len(r) for r in rows)
    kv = KVBuffers(len(rows), width + len(decode))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros_like(ids)
    valid = torch.zeros((len(rows), kv.capacity), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        positions[i, width - len(r):] = torch.arange(len(r))
        valid[i, width - len(r): width] = True
    out = [step(ids, positions, valid, kv)]
    next_pos = torch.tensor([len(r) for r in rows])
    for tokens in decode:
        valid[:, kv.length] = True
        out.append(step(torch.tensor(tokens)[:, None], next_pos[:, None], valid, kv))
        next_pos = next_pos + 1
    return out, kv


@torch.no_grad()
def assert_model_logits(model, out, decode):
    """``out[t][i]`` is the model's own last-position logits for row i after t decode steps."""
    for t, logits in enumerate(out):
        for i, row in enumerate(ROWS):
            full = row + [d[i] for d in decode[:t]]
            torch.testing.assert_close(logits[i], reference_logits(model, full), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("make", [qwen2, llama, llama3_with_biases], ids=["qwen2", "llama", "llama3-biases"])
def test_llama_step_gives_the_models_logits_over_prefill_and_decode(make):
    model = make()
    assert has_llama_layout(model)
    decode = [[11, 12, 13], [20, 21, 22]]
    out, kv = run_steps(llama_step(model), ROWS, decode)
    assert kv.length == max(len(r) for r in ROWS) + 2
    assert kv.layers[0].shape == (2, 3, kv.capacity, 2, 16)  # (K/V, rows, capacity, kv heads, head dim)
    assert_model_logits(model, out, decode)


def test_transformers_step_gives_the_models_logits_for_another_architecture():
    model = gpt2()
    assert not has_llama_layout(model)
    decode = [[11, 12, 13]]
    out, _ = run_steps(transformers_step(model), ROWS, decode)
    assert_model_logits(model, out, decode)


def test_the_step_is_chosen_by_layout_and_lora_projections_are_used():
    sliding = qwen2(use_sliding_window=True, sliding_window=4, max_window_layers=0)
    assert not has_llama_layout(sliding)  # sliding-window layers: the transformers forward handles them
    dynamic = qwen2(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    assert not has_llama_layout(dynamic)  # cos/sin change with the sequence length
    assert step_function(gpt2()).__qualname__.startswith("transformers_step")

    lora = with_lora(qwen2(), LoraSection(enabled=True, r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # fresh adapters are a no-op; make them change the logits
    step = step_function(lora)
    assert step.__qualname__.startswith("llama_step")
    out, _ = run_steps(step, ROWS, [])
    plain = qwen2()  # the same base weights without adapters
    with torch.no_grad():
        for i, row in enumerate(ROWS):
            expected = lora(input_ids=torch.tensor([row])).logits[0, -1]
            torch.testing.assert_close(out[0][i], expected, atol=1e-4, rtol=1e-4)
            assert not torch.allclose(expected, reference_logits(plain, row), atol=1e-3)


def test_kv_buffers_refuse_to_overflow_and_select_rows_repeats_them():
    kv = KVBuffers(rows=2, capacity=3)
    k = torch.arange(2 * 2 * 1 * 4, dtype=torch.float).view(2, 2, 1, 4)  # (rows, q, heads, dim)
    keys, _ = kv.write(0, k, k)
    assert keys.shape == (2, 1, 2, 4)  # (rows, heads, n, dim) for attention
    assert torch.equal(keys, k.transpose(1, 2))
    kv.length = 2
    with pytest.raises(ValueError, match="hold 3 tokens; a step needs 4"):
        kv.write(0, k, k)
    kv.select_rows(torch.tensor([1, 1, 0]))
    assert kv.rows == 3 and torch.equal(kv.layers[0][0, 0, :2], k[1]) and torch.equal(kv.layers[0][1, 2, :2], k[0])


def test_kv_buffers_drop_rows_moves_only_the_rows_past_the_new_count():
    kv = KVBuffers(rows=5, capacity=2)
    k = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 2, 1, 1).contiguous()  # row r holds r
    kv.write(0, k, -k)
    buffer_before = kv.layers[0]
    order = kv.drop_rows(torch.tensor([False, True, False, True, False]))
    assert order.tolist() == [0, 4, 2]  # row 4 moved into row 1's place; row 2 stayed
    assert kv.rows == 3 and kv.layers[0].shape == (2, 3, 2, 1, 1)
    assert kv.layers[0].data_ptr() == buffer_before.data_ptr()  # a narrowed view, not a copy
    assert kv.layers[0][0, :, 0, 0, 0].tolist() == [0.0, 4.0, 2.0]
    assert kv.layers[0][1, :, 1, 0, 0].tolist() == [-0.0, -4.0, -2.0]


def test_kv_buffers_gather_and_scatter_are_inverse_over_row_column_pairs():
    kv = KVBuffers(rows=2, capacity=3)
    k = torch.randn(2, 3, 2, 4)
    kv.write(0, k, k + 1)
    rows, columns = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 1])
    (got,) = kv.gather(rows, columns)
    assert got.shape == (2, 3, 2, 4)  # (K/V, pairs, heads, dim)
    assert torch.equal(got[0, 0], k[0, 2]) and torch.equal(got[1, 2], k[1, 1] + 1)
    other = KVBuffers(rows=2, capacity=3, length=3)  # seeded columns start at zero
    other.allocate(0, k)
    other.scatter(rows, columns, [got])
    assert torch.equal(other.layers[0][:, rows, columns], got) and other.layers[0][:, 0, :2].abs().sum() == 0


def test_attention_mask_is_causal_over_real_columns_and_always_sees_itself():
    valid = torch.tensor([[False, True, False, False, False], [True, True, True, True, True]])
    mask = attention_mask(valid, length=2, q=2)
    assert mask.shape == (2, 1, 2, 4)
    # row 0: column 1 is real; the new columns 2, 3 are padding, each seeing itself only besides column 1
    assert mask[0, 0].tolist() == [[False, True, True, False], [False, True, False, True]]
    assert mask[1, 0].tolist() == [[True, True, True, False], [True, True, True, True]]


def test_llama_step_in_bfloat16_keeps_the_dtype_and_stays_close():
    model = qwen2().to(torch.bfloat16)
    out, kv = run_steps(llama_step(model), ROWS, [[11, 12, 13]])
    assert kv.layers[0].dtype == torch.bfloat16 and out[1].dtype == torch.bfloat16
    with torch.no_grad():
        for i, row in enumerate(ROWS):
            expected = reference_logits(model, row + [[11, 12, 13][i]])
            torch.testing.assert_close(out[1][i].float(), expected.float(), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("make", [qwen2, llama3_with_biases], ids=["qwen2", "llama3-biases"])
def test_llama_step_of_fp32_weights_computes_in_the_dtype_it_is_given(make):
    """C2: under bf16 mixed precision the trainable weights are fp32; the rollout packs them in
    bf16. The packed weights, K/V and logits are bf16, and the logits stay within 0.02 + 2% of the
    fp32 transformers forward (seen: 0.004 at logits up to 0.56; bf16 rounds to ~0.4% per op)."""
    from zerosearch.lm.kv_forward import pack_llama

    model = make()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    layer = pack_llama(model, torch.bfloat16)[0]
    assert {layer.qkv.dtype, layer.o.dtype, layer.gate_up.dtype, layer.down.dtype, layer.input_norm[0].dtype} == {
        torch.bfloat16}
    assert pack_llama(model)[0].qkv.dtype == torch.float32  # None: the weights' own
    decode = [[11, 12, 13]]
    out, kv = run_steps(step_function(model, torch.bfloat16), ROWS, decode)
    assert kv.layers[0].dtype == torch.bfloat16 and out[0].dtype == out[1].dtype == torch.bfloat16
    with torch.no_grad():
        for t, logits in enumerate(out):
            for i, row in enumerate(ROWS):
                expected = reference_logits(model, row + [d[i] for d in decode[:t]])
                torch.testing.assert_close(logits[i].float(), expected, atol=0.02, rtol=0.02)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the model itself is untouched


def test_zero3_sharded_models_take_the_transformers_forward():
    model = qwen2()
    assert step_function(model).__qualname__.startswith("llama_step")
    model.model.norm.weight.ds_id = 7  # what DeepSpeed ZeRO-3 sets on the parameters it partitions
    assert step_function(model).__qualname__.startswith("transformers_step")


def test_llama_step_packs_the_weights_again_after_they_change():
    model = qwen2()
    step = llama_step(model)
    before, _ = run_steps(step, ROWS, [])
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(3.0)  # an in-place update, as an optimizer step
    after, _ = run_steps(step, ROWS, [])
    assert not torch.allclose(before[0], after[0], atol=1e-3)
    assert_model_logits(model, after, [])


def test_linear_weights_reads_a_wrapped_linear_off_its_outputs():
    torch.manual_seed(0)
    plain = torch.nn.Linear(6, 4)
    wrapped = torch.nn.Sequential(plain)  # any linear module that is not an nn.Linear
    wrapped.in_features, wrapped.weight = 6, plain.weight
    weight, bias = linear_weights(wrapped)
    torch.testing.assert_close(weight, plain.weight)
    torch.testing.assert_close(bias, plain.bias)
    assert linear_weights(plain)[0] is plain.weight
