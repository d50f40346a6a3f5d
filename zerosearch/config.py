"""Typed configuration: one pydantic schema for ``params.yaml`` and every ``configs/*.yaml``.

The schema has no defaults: every value an experiment uses is written in a params file.
``params.yaml`` (the tiny world, what DVC reads) is complete; a preset is an *overlay*: it
names the file it ``extends`` and holds only what differs (the paper presets extend
``configs/paper/base.yaml``, which is complete). ``load_config(path, overrides)`` resolves the
``extends`` chain, applies ``dotted.key=value`` overrides (values parsed as YAML), and
validates: an unknown key (in an overlay: named with its file), a cycle of ``extends``, a
wrong type or an out-of-range value raises ``ConfigError`` naming the key and the file.
The field docs live as comments in ``params.yaml``; this module holds types and bounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from zerosearch.errors import InputError

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]


class ConfigError(InputError, ValueError):
    """A config file or override that does not fit the schema; the message names key and file."""


def _base_types(annotation: Any) -> set[type]:
    """The plain types a field accepts: unions and ``Annotated`` unwrapped, a ``Literal``'s values' types."""
    if get_origin(annotation) is Literal:
        return {type(v) for v in get_args(annotation)}
    args = get_args(annotation)
    if not args:
        return {annotation} if isinstance(annotation, type) else set()
    if get_origin(annotation) is Annotated:
        return _base_types(args[0])
    if get_origin(annotation) in (list, dict, tuple):
        return {get_origin(annotation)}
    return set().union(*(_base_types(a) for a in args))


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    if get_origin(annotation) is Literal:
        return " or ".join(repr(v) for v in get_args(annotation))
    args = [a for a in get_args(annotation) if isinstance(a, type) or get_args(a)]
    if args:
        return " or ".join(dict.fromkeys(_type_name(a) for a in args))
    return getattr(annotation, "__name__", str(annotation))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        """``total_steps: true`` is a mistake, not 1 (and ``enabled: 1`` not true): YAML booleans
        where a bool belongs, and only there."""
        if isinstance(data, Mapping):
            for name, field in cls.model_fields.items():
                if name not in data:
                    continue
                value, kinds = data[name], _base_types(field.annotation)
                is_bool, is_number = isinstance(value, bool), isinstance(value, (int, float)) and not isinstance(value, bool)
                if (is_bool and bool not in kinds) or (is_number and bool in kinds and not kinds & {int, float}):
                    raise ValueError(f"{name}: expected {_type_name(field.annotation)}, got {value!r}")
        return data


class Paths(_Section):
    data: str
    models: str
    metrics: str


class BaseSection(_Section):
    seed: int
    preset: str
    paths: Paths
    policy_model: str
    simulator_model: str
    mlflow_experiment: str
    trust_remote_code: bool
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"]
    chat_prompt: Literal["auto"] | bool


class WorldSection(_Section):
    seed: Annotated[int, Field(ge=0)]
    n_entities: Annotated[int, Field(ge=60)]
    n_train_questions: PositiveInt
    n_test_questions: PositiveInt
    test_fraction: Annotated[float, Field(gt=0.0, lt=0.5)]
    two_hop_fraction: Probability


class DataSection(_Section):
    source: Literal["tinyworld", "hub"]
    train_source: str
    benchmarks_source: str
    benchmarks: list[str]
    in_domain: list[str]
    corpus: str | None
    skip_malformed: bool
    validation: Literal["benchmarks", "zerosearch_test"]
    world: WorldSection

    @model_validator(mode="after")
    def _in_domain_subset(self) -> DataSection:
        unknown = [b for b in self.in_domain if b not in self.benchmarks]
        if unknown:
            raise ValueError(f"in_domain names benchmarks not in data.benchmarks: {unknown}")
        if self.validation == "zerosearch_test" and self.source != "hub":
            raise ValueError("validation: zerosearch_test is ZeroSearch_dataset's test.parquet and needs source: hub "
                             "(the tiny world validates on its benchmarks: validation: benchmarks)")
        return self


class ModelShape(_Section):
    hidden_size: PositiveInt
    num_layers: PositiveInt
    num_heads: PositiveInt
    num_kv_heads: PositiveInt
    intermediate_size: PositiveInt
    max_position: PositiveInt

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelShape:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be divisible by num_kv_heads")
        return self


class PretrainRun(_Section):
    steps: PositiveInt
    batch_size: PositiveInt
    seq_len: PositiveInt
    lr: PositiveFloat
    warmup_steps: Annotated[int, Field(ge=0)]
    weight_decay: Annotated[float, Field(ge=0)]
    precision: Literal["fp32", "bf16"]


class TinyModelsSection(_Section):
    build: bool
    vocab_size: Annotated[int, Field(ge=512)]
    policy: ModelShape
    policy_pretrain: PretrainRun
    simulator_pretrain: PretrainRun
    n_demos: PositiveInt
    n_reading_drills: Annotated[int, Field(ge=0)]
    demo_entities: Annotated[int, Field(ge=60)]

    @model_validator(mode="after")
    def _fits_context(self) -> TinyModelsSection:
        for name in ("policy_pretrain", "simulator_pretrain"):
            if getattr(self, name).seq_len > self.policy.max_position:
                raise ValueError(f"{name}.seq_len must be <= policy.max_position")
        return self


class BM25Section(_Section):
    k1: PositiveFloat
    b: Probability


class SearchSection(_Section):
    engine: Literal["bm25", "simulated", "hybrid", "dense", "web"]
    top_k: PositiveInt
    bm25: BM25Section


class CurriculumSection(_Section):
    schedule: Literal["exponential", "fixed"]
    p_start: Probability
    p_end: Probability
    base: Annotated[float, Field(gt=1.0)]

    @model_validator(mode="after")
    def _start_le_end(self) -> CurriculumSection:
        # checked under every schedule (``fixed`` reads p_end only): one rule, and a preset
        # switched back to exponential stays valid
        if self.p_start > self.p_end:
            raise ValueError(f"p_start ({self.p_start}) must be <= p_end ({self.p_end})")
        return self


class SimulatorProbeSection(_Section):
    enabled: bool
    n_questions: PositiveInt
    min_gap: Annotated[float, Field(ge=0.0, le=1.0)]


class SimulatorSection(_Section):
    prompt: Literal["ours-sft", "ours-prompt", "zerosearch-sft", "zerosearch-prompt"]
    prompt_template_file: str | None
    api: Literal["completions", "chat"]
    system_message: str | None
    backend: Literal["inprocess", "transformers", "sglang", "vllm", "url"]
    url: str | Annotated[list[str], Field(min_length=1)] | None
    tp: PositiveInt
    dp: PositiveInt
    cuda_visible_devices: str | None
    port: Annotated[int, Field(ge=0, le=65535)]
    server_args: list[str]
    startup_timeout: PositiveFloat
    request_timeout: PositiveFloat
    max_retries: Annotated[int, Field(ge=0)]
    stall_timeout: PositiveFloat
    concurrency: PositiveInt
    cache_dir: str | None
    hybrid_real_fraction: Probability
    max_tokens: PositiveInt
    temperature: Annotated[float, Field(ge=0.0)]
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None
    curriculum: CurriculumSection
    probe: SimulatorProbeSection

    @model_validator(mode="after")
    def _inprocess_has_no_cache(self) -> SimulatorSection:
        if self.backend == "inprocess" and self.cache_dir is not None:
            raise ValueError("simulator.cache_dir caches a served simulator's HTTP completions; the inprocess "
                             "backend has none: set cache_dir: null or a served backend")
        return self

    @model_validator(mode="after")
    def _system_message_needs_chat(self) -> SimulatorSection:
        if self.api == "completions" and self.system_message is not None:
            raise ValueError("system_message must be null with api: completions (a raw completion has no "
                             "messages); use api: chat to send one")
        return self

    @field_validator("cuda_visible_devices", mode="before")
    @classmethod
    def _devices_as_text(cls, value: Any) -> Any:
        """``cuda_visible_devices: 0`` is an int in YAML; the variable is text (``"0,1"``)."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class LoraSection(_Section):
    enabled: bool
    r: PositiveInt
    alpha: PositiveInt
    dropout: Probability


class ScratchSimulatorSection(_Section):
    shape: ModelShape
    pretrain: PretrainRun

    @model_validator(mode="after")
    def _fits_context(self) -> ScratchSimulatorSection:
        if self.pretrain.seq_len > self.shape.max_position:
            raise ValueError("pretrain.seq_len must be <= shape.max_position")
        return self


class SimulatorSftSection(_Section):
    enabled: bool
    init: Literal["policy_copy", "scratch"]
    scratch: ScratchSimulatorSection
    n_questions: PositiveInt
    collect_temperature: PositiveFloat
    demo_world_searches: Annotated[int, Field(ge=0)]
    heldout_fraction: Annotated[float, Field(gt=0.0, lt=0.5)]
    train: PretrainRun
    lora: LoraSection

    @model_validator(mode="after")
    def _scratch_fits_the_sft_run(self) -> SimulatorSftSection:
        if self.init == "scratch" and self.train.seq_len > self.scratch.shape.max_position:
            raise ValueError("init: scratch fine-tunes a model of scratch.shape: train.seq_len must be <= "
                             "scratch.shape.max_position")
        return self


class TrainSection(_Section):
    seed: Annotated[int, Field(ge=0)]
    algorithm: Literal["grpo", "ppo", "reinforce", "reinforce_pp"]
    engine: Literal["bm25", "simulated", "hybrid"]
    reward: Literal["f1", "em"]
    total_steps: PositiveInt
    lr: PositiveFloat
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)]
    critic_lr: PositiveFloat
    critic_warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)]
    batch_prompts: PositiveInt
    group_size: PositiveInt
    temperature: PositiveFloat
    top_p: Annotated[float, Field(gt=0.0, le=1.0)]
    kl_coef: Annotated[float, Field(ge=0.0)]
    kl_estimator: Literal["k1", "k2", "k3"]
    clip_ratio: Annotated[float, Field(gt=0.0, lt=1.0)]
    gamma: Probability
    lam: Probability
    max_turns: Annotated[int, Field(ge=0)]
    max_response_tokens: PositiveInt
    max_obs_tokens: PositiveInt
    max_prompt_tokens: PositiveInt
    corrective_message: Literal["ours", "reference"]
    information_layout: Literal["ours", "reference"]
    mask_observations: bool
    ppo_epochs: PositiveInt
    mini_batch_size: PositiveInt
    micro_batch_size: PositiveInt
    max_grad_norm: PositiveFloat
    entropy_coef: Annotated[float, Field(ge=0.0)]
    value_clip: PositiveFloat
    save_every: PositiveInt
    val_every: Annotated[int, Field(ge=0)]
    val_max_samples: Annotated[int, Field(ge=0)]
    gradient_checkpointing: bool
    mixed_precision: Literal["auto", "no", "bf16", "fp16"]
    rollout_backend: Literal["hf", "vllm"]
    vllm_gpu_memory_utilization: Annotated[float, Field(gt=0.0, lt=1.0)]
    lora: LoraSection

    @model_validator(mode="after")
    def _batches_divide(self) -> TrainSection:
        # mini_batch_size need not divide batch_prompts * group_size: the step's rollouts are cut into
        # consecutive mini-batches, the last one smaller (the reference's 320 = 256 + 64).
        if self.mini_batch_size % self.micro_batch_size:
            raise ValueError(f"micro_batch_size ({self.micro_batch_size}) must divide mini_batch_size "
                             f"({self.mini_batch_size})")
        return self


class EvalSection(_Section):
    policy: str
    engine: Literal["bm25", "dense", "web", "simulated", "hybrid"]
    methods: list[Literal["direct", "rag", "base_agent", "agent"]]
    max_samples: Annotated[int, Field(ge=0)]
    batch_size: PositiveInt
    headline_metric: Literal["em", "substring_em"]
    registered_model: str


class OrchestrationSection(_Section):
    deployment: Annotated[str, Field(min_length=1)]
    cron: str
    timezone: str
    preset: str
    experiment_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]

    @model_validator(mode="after")
    def _cron_parses(self) -> OrchestrationSection:
        if self.cron:
            from cronsim import CronSim, CronSimError

            try:
                CronSim(self.cron, datetime.now())
            except CronSimError:
                raise ValueError(f"cron {self.cron!r} is not a valid cron expression (e.g. '0 3 * * 1')") from None
        return self


class Config(_Section):
    base: BaseSection
    data: DataSection
    tiny_models: TinyModelsSection
    search: SearchSection
    simulator: SimulatorSection
    simulator_sft: SimulatorSftSection
    train: TrainSection
    eval: EvalSection
    orchestration: OrchestrationSection

    @model_validator(mode="after")
    def _sft_stage_trains_on_the_served_template(self) -> Config:
        """The simulator SFT stage fine-tunes on ``ours-sft`` raw completions: serving the result
        with another input format would ask it in a format it never saw."""
        sim = self.simulator
        if self.simulator_sft.enabled and (sim.prompt != "ours-sft" or sim.prompt_template_file is not None
                                           or sim.api != "completions"):
            raise ValueError("simulator_sft.enabled fine-tunes the simulator on the ours-sft completion prompt: "
                             "set simulator.prompt=ours-sft, simulator.prompt_template_file=null and "
                             "simulator.api=completions, or simulator_sft.enabled=false to serve "
                             "base.simulator_model with another template")
        return self

    @model_validator(mode="after")
    def _scratch_simulator_in_the_tiny_world(self) -> Config:
        """A simulator pretrained from scratch reads the tiny world's pretraining texts and the
        base stage's tokenizer: there are none outside it, and nothing to build when the SFT
        stage is off."""
        if self.simulator_sft.init == "scratch":
            if not self.tiny_models.build:
                raise ValueError("simulator_sft.init: scratch pretrains a tiny simulator on the tiny world's texts "
                                 "with the base stage's tokenizer and needs tiny_models.build: true; outside the "
                                 "tiny world use simulator_sft.init: policy_copy (fine-tune base.simulator_model)")
            if not self.simulator_sft.enabled:
                raise ValueError("simulator_sft.init: scratch builds the simulator in the simulator_sft stage: set "
                                 "simulator_sft.enabled: true, or init: policy_copy")
        return self

    def path(self, name: str) -> Path:
        """A path from ``base.paths`` (``data``, ``models``, ``metrics``)."""
        return Path(getattr(self.base.paths, name))

    def served_simulator(self) -> str:
        """The simulator model to serve: the SFT stage's output when that stage runs, else
        ``base.simulator_model`` (a released simulator or an instruct model)."""
        if self.simulator_sft.enabled:
            return str(self.path("models") / "simulator_sft")
        return self.base.simulator_model


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: a config as the dotted keys overrides use."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.total_steps=50`` -> (["train", "total_steps"], 50); the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Set each dotted key in a copy of ``raw``; a path through a non-mapping is an error."""
    out = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return out


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def validate_config(raw: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a raw mapping; raise ConfigError naming each bad key and ``source``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return raw


def _check_keys(raw: Mapping[str, Any], model: type[BaseModel], path: Path, prefix: str = "") -> None:
    """Every key of an overlay must be a field of the schema (at its depth): a misspelt key in
    a preset is an error naming the preset file, not a silent no-op."""
    for key, value in raw.items():
        field = model.model_fields.get(key)
        if field is None:
            raise ConfigError(f"{path}: unknown key {prefix}{key} (known here: {', '.join(model.model_fields)})")
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path}: {prefix}{key} must be a section (a mapping), got {value!r}")
            _check_keys(value, sub, path, f"{prefix}{key}.")


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` on ``base``: sections merge key by key, any other value (lists too) replaces."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def read_params(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw mapping of a params file with its ``extends`` chain applied.

    A preset may start with ``extends: <file>`` (relative to the preset's own directory) and
    hold only what differs from that file; the chain is resolved base first. An overlay's
    unknown key, or a cycle of ``extends``, is a ConfigError naming the file."""
    path = Path(path)
    here = path.resolve()
    if here in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, here))
        raise ConfigError(f"{path}: `extends` forms a cycle: {cycle}")
    raw = _read_yaml(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{path}: `extends` must name a params file, got {parent!r}")
    _check_keys(raw, Config, path)
    base = read_params(path.parent / parent, (*_chain, here))
    return _merge(base, raw)


def load_config(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Config:
    """Read a params file (resolving ``extends``), apply overrides, validate."""
    raw = read_params(path)
    source = str(path) + (f" (with overrides {overrides})" if overrides else "")
    return validate_config(apply_overrides(raw, overrides or [], source), source)
