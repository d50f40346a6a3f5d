"""Tiny model and tokenizer factory, and loading of HF checkpoints (safetensors only).

The tiny world's models are built offline: a byte-level BPE tokenizer trained locally with
``tokenizers`` (the protocol tags are single tokens), wrapped as ``PreTrainedTokenizerFast``
with a chat template, and a small Qwen2-architecture causal LM.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from zerosearch.atomic import atomic_path
from zerosearch.config import LoraSection, ModelShape

logger = logging.getLogger(__name__)

PROTOCOL_TAGS = ["<think>", "</think>", "<search>", "</search>", "<information>", "</information>",
                 "<answer>", "</answer>"]
EOS, PAD, IM_START, IM_END = "<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [EOS, PAD, IM_START, IM_END, *PROTOCOL_TAGS]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``; tags and chat markers are single tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END, *PROTOCOL_TAGS],
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        padding_side="left",
    )


def tiny_config(shape: ModelShape, vocab_size: int, **token_ids: int | None) -> Qwen2Config:
    """The Qwen2 config of a tiny model of ``shape`` (tied embeddings); ``token_ids``: its
    ``bos_token_id`` / ``eos_token_id`` / ``pad_token_id``."""
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_position,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        **token_ids,
    )


def tiny_causal_lm(shape: ModelShape, vocab_size: int, tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen2ForCausalLM:
    """A randomly initialized Qwen2 causal LM of the given shape (tied embeddings)."""
    config = tiny_config(shape, vocab_size, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    # Servers (transformers serve) sample only when the saved generation config says so.
    model.generation_config.do_sample = True
    model.generation_config.top_k = 0
    return model


def shape_parameter_count(shape: ModelShape, vocab_size: int) -> int:
    """Parameters of ``tiny_causal_lm(shape, vocab_size, ...)``, counted on the meta device
    (nothing allocated)."""
    with torch.device("meta"):
        return count_parameters(Qwen2ForCausalLM(tiny_config(shape, vocab_size)))


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resolve_model_path(name: str) -> str:
    """Check that a model exists before loading it: a local directory with a ``config.json``,
    or a hub id that is in the HF cache (or downloadable when online). Returns a local
    directory when one is known, else the hub id. Raises FileNotFoundError saying what to do."""
    if Path(name).is_dir():
        if not (Path(name) / "config.json").exists():
            raise FileNotFoundError(f"{name} is a directory but has no config.json: not an HF model")
        return name
    if name.startswith((".", "/")) or name.count("/") != 1:
        raise FileNotFoundError(f"model directory {name} does not exist (run the stage that builds it)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(name, allow_patterns=["*.json"], local_files_only=True)
    except LocalEntryNotFoundError:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise FileNotFoundError(
                f"model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1: "
                f"download it first (`hf download {name}`) or point the config at a local directory"
            ) from None
        return name  # online: from_pretrained downloads it


def resolve_attn_implementation(requested: str = "auto") -> str:
    """``auto``: ``flash_attention_2`` on CUDA when the flash-attn package is installed, else
    ``sdpa`` (said in a log line on CUDA, where flash-attn was the better choice)."""
    if requested != "auto":
        return requested
    if not torch.cuda.is_available():
        return "sdpa"
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    logger.info("flash-attn is not installed: attention runs on sdpa (pip install flash-attn for flash_attention_2)")
    return "sdpa"


def load_model(name: str, *, dtype: torch.dtype | str | None = None, trust_remote_code: bool = False,
               attn_implementation: str = "auto"):
    """Load a causal LM and its tokenizer (safetensors only) from a directory or hub id.
    ``dtype``: None or ``"auto"`` is the checkpoint's own (transformers 5 treats None as
    ``"auto"``: bf16 for Qwen2.5 and Llama-3.2); pass ``torch.float32`` for weights an optimizer
    updates directly. ``attn_implementation``: see ``resolve_attn_implementation``."""
    resolve_model_path(name)
    model = AutoModelForCausalLM.from_pretrained(
        name, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
        attn_implementation=resolve_attn_implementation(attn_implementation),
    )
    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def save_model(model, tokenizer, path: str | Path) -> Path:
    """``save_pretrained`` (safetensors) of a model and its tokenizer into a temp dir, then
    rename over ``path``: a crash never leaves half a model."""
    with atomic_path(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(path)


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token-id lists for batched generation: ``(ids, attention_mask)``, (B, max_len)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(sequences):
        if s:
            ids[row, width - len(s):] = torch.tensor(s)
            mask[row, width - len(s):] = 1
    return ids, mask


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def with_lora(model, lora: LoraSection):
    """``model`` wrapped with fresh peft LoRA adapters on every attention and MLP projection."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            task_type="CAUSAL_LM", target_modules=LORA_TARGETS))
