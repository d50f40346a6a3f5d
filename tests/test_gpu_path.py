"""The GPU path's decisions, checked on CPU (precision, attention kernel, data-parallel split,
rollout backend choice, launch configs), and `gpu`-marked tests that run the trainer on CUDA
(skipped without it)."""

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, micro_config
from zerosearch.lm.generation import HFGenerator
from zerosearch.lm.models import resolve_attn_implementation
from zerosearch.rl.launch import resolve_mixed_precision
from zerosearch.rl.trainer import RLTrainer
from zerosearch.rl.update import local_mini_batch

ROWS = [{"question": f"q{i}", "golden_answers": [f"a{i}"]} for i in range(40)]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_auto_precision_and_attention_on_cpu_keep_fp32_and_sdpa(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_mixed_precision("auto") == "no" and resolve_mixed_precision("bf16") == "bf16"
    assert resolve_attn_implementation("auto") == "sdpa"
    assert resolve_attn_implementation("eager") == "eager"


def test_auto_attention_on_cuda_without_flash_attn_falls_back_to_sdpa_with_a_log_line(monkeypatch, caplog):
    import importlib.util

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    with caplog.at_level("INFO", logger="zerosearch.lm.models"):
        assert resolve_attn_implementation("auto") == "sdpa"
    assert "flash-attn is not installed" in caplog.text
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert resolve_attn_implementation("auto") == "flash_attention_2"


def fake_accelerator(index, n):
    return types.SimpleNamespace(process_index=index, local_process_index=index, num_processes=n,
                                 is_main_process=index == 0, state=types.SimpleNamespace(deepspeed_plugin=None),
                                 waits=[], wait_for_everyone=lambda: None)


def test_processes_split_the_prompts_of_a_step_by_whole_prompts(tmp_path):
    cfg = micro_config(tmp_path, "train.batch_prompts=4", "train.group_size=3", "train.mini_batch_size=6",
                       "train.micro_batch_size=3")
    shards = [RLTrainer(cfg, None, ROWS, checkpoint_dir=tmp_path, accelerator=fake_accelerator(i, 2)).sample_rows(5)
              for i in range(2)]
    whole = RLTrainer(cfg, None, ROWS, checkpoint_dir=tmp_path, accelerator=fake_accelerator(0, 1)).sample_rows(5)
    assert len(whole) == 4 and sorted(map(str, shards[0] + shards[1])) == sorted(map(str, whole))
    assert len(shards[0]) == len(shards[1]) == 2
    trainer = RLTrainer(cfg, None, ROWS, checkpoint_dir=tmp_path, accelerator=fake_accelerator(0, 3))
    with pytest.raises(ValueError, match="batch_prompts \\(4\\) must be a multiple of the 3 processes"):
        trainer._check_process_split()
    # mini_batch_size counts the trajectories of all processes: 12 = 2 x 6, each share 2 micro-batches of 3
    cfg = micro_config(tmp_path, "train.batch_prompts=4", "train.group_size=3", "train.mini_batch_size=12",
                       "train.micro_batch_size=3")
    trainer = RLTrainer(cfg, None, ROWS, checkpoint_dir=tmp_path, accelerator=fake_accelerator(0, 2))
    trainer._check_process_split()
    assert local_mini_batch(trainer.t, 2) == 6 and trainer.on_policy(6) and not trainer.on_policy(7)
    cfg = micro_config(tmp_path, "train.batch_prompts=4", "train.group_size=3", "train.mini_batch_size=6",
                       "train.micro_batch_size=6")
    trainer = RLTrainer(cfg, None, ROWS, checkpoint_dir=tmp_path, accelerator=fake_accelerator(0, 2))
    with pytest.raises(ValueError, match="mini_batch_size \\(6, trajectories of all processes\\) must split into 2"):
        trainer._check_process_split()


def test_the_paper_presets_split_over_two_and_four_processes(tmp_path):
    """A4: the presets' mini_batch_size 256 (of 64 prompts x 5 = 320) is global, each process trains on its
    share: 128 + 32 of its 160 rollouts on 2 processes, 64 + 16 of 80 on 4."""
    from zerosearch.config import load_config

    cfg = load_config(REPO / "configs/paper/grpo-qwen2.5-3b-sft.yaml")
    for n, local in ((2, 128), (4, 64)):
        trainer = RLTrainer(cfg, None, ROWS, checkpoint_dir=tmp_path, accelerator=fake_accelerator(0, n))
        trainer._check_process_split()
        assert local_mini_batch(trainer.t, n) == local and local % cfg.train.micro_batch_size == 0


def test_rollout_backend_hf_makes_a_generator_per_step_vllm_one_engine_synced_every_step(tmp_path, monkeypatch):
    from zerosearch.lm import vllm_generator
    from zerosearch.lm.models import train_tokenizer

    tok = train_tokenizer(["<search> a </search> <answer> b </answer>"] * 5, vocab_size=300)
    cfg = micro_config(tmp_path)
    trainer = RLTrainer(cfg, None, ROWS, checkpoint_dir=tmp_path, accelerator=fake_accelerator(0, 1))
    trainer.m = types.SimpleNamespace(tokenizer=tok)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    policy = Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                          num_key_value_heads=1, intermediate_size=32))
    assert isinstance(trainer.generator(policy), HFGenerator)
    assert trainer.generator(policy).top_p is None  # tiny top_p 1.0: no nucleus filter
    nucleus = RLTrainer(micro_config(tmp_path, "train.top_p=0.95"), None, ROWS, checkpoint_dir=tmp_path,
                        accelerator=fake_accelerator(0, 1))
    nucleus.m = trainer.m
    assert nucleus.generator(policy).top_p.top_p == 0.95

    created, synced = [], []

    class Engine:
        def sync_weights(self, p):
            synced.append(p)

    def create(path, tokenizer, **kw):
        created.append((path, kw))
        return Engine()

    monkeypatch.setattr(vllm_generator.VLLMGenerator, "create", staticmethod(create))
    cfg = micro_config(tmp_path, "train.rollout_backend=vllm", "train.vllm_gpu_memory_utilization=0.25")
    acc = fake_accelerator(1, 2)
    acc.wait_for_everyone = lambda: acc.waits.append(len(created))
    trainer = RLTrainer(cfg, None, ROWS, checkpoint_dir=tmp_path, accelerator=acc)
    trainer.m = types.SimpleNamespace(tokenizer=None)
    first, second = trainer.generator(policy), trainer.generator(policy)
    assert first is second and len(created) == 1 and synced == [policy, policy]
    assert created[0][1]["gpu_memory_utilization"] == 0.25 and created[0][1]["seed"] == cfg.base.seed + 1
    assert created[0][1]["top_p"] == cfg.train.top_p == 1.0 and created[0][1]["temperature"] == cfg.train.temperature
    assert (created[0][1]["rank"], created[0][1]["local_rank"], created[0][1]["world_size"]) == (1, 1, 2)
    assert acc.waits == [1]  # every process waits once, after its engine is built



@pytest.mark.parametrize("name", ["deepspeed_zero2.yaml", "multinode_zero2.yaml"])
def test_launch_configs_are_deepspeed_bf16_and_the_launch_command_parses(name):
    raw = yaml.safe_load((REPO / "configs" / "accelerate" / name).read_text())
    assert raw["distributed_type"] == "DEEPSPEED" and raw["mixed_precision"] == "bf16"
    assert raw["num_processes"] == 4 * raw["num_machines"]
    from accelerate.commands.launch import launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(REPO / "configs/accelerate" / name),
                                               "-m", "zerosearch.cli", "train", "--resume"])
    assert args.module and args.training_script == "zerosearch.cli" and args.training_script_args == ["train", "--resume"]


def test_python_m_zerosearch_cli_is_the_cli():
    """`accelerate launch -m zerosearch.cli train` needs the module to run the app."""
    out = subprocess.run([sys.executable, "-m", "zerosearch.cli", "train", "--help"], check=False, capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and "--resume" in out.stdout


@pytest.mark.gpu
@cuda
def test_the_train_stage_runs_on_cuda_in_bf16(micro_world):
    from zerosearch.stages import train as train_stage

    cfg = micro_config(micro_world, "train.engine=bm25", "train.total_steps=2", "train.save_every=1",
                       "train.batch_prompts=2", "train.group_size=2", "train.mini_batch_size=4",
                       "train.micro_batch_size=2", "train.mixed_precision=auto")
    torch.cuda.reset_peak_memory_stats()
    summary = train_stage.run(cfg)
    assert summary["steps"] == 2 and torch.cuda.max_memory_allocated() > 0
    assert resolve_mixed_precision("auto") == "bf16"


@pytest.mark.gpu
@cuda
def test_hf_generator_on_cuda_matches_generate(micro_world):
    from zerosearch.lm.models import left_pad, load_model

    model, tok = load_model(str(micro_world / "models/base/policy"))
    model = model.cuda().eval()
    gen = HFGenerator(model, tok, do_sample=False)
    contexts = [tok("Where was", add_special_tokens=False)["input_ids"], tok("The answer", add_special_tokens=False)["input_ids"]]
    ids, mask = left_pad(contexts, gen.pad_id)
    ref = model.generate(input_ids=ids.cuda(), attention_mask=mask.cuda(), max_new_tokens=12, do_sample=False,
                         eos_token_id=gen.stop_ids, pad_token_id=gen.pad_id)[:, ids.shape[1]:].tolist()
    out = gen.generate(contexts, 12, keys=[0, 1])
    for row, mine in zip(ref, out):
        assert row[: len(mine)] == mine


@pytest.fixture
def fresh_accelerate_state():
    """accelerate's state is a process-wide singleton: a test that changes mixed precision resets it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_trainable_models_keep_fp32_weights_under_bf16_autocast_when_the_checkpoint_is_bf16(
        micro_world, tmp_path, fresh_accelerate_state):
    """B1: transformers 5 loads dtype=None as "auto" (the checkpoint's bf16); accelerate's bf16 is
    autocast only, so AdamW would update bf16 weights. Without DeepSpeed the trainer loads fp32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zerosearch.lm.models import load_model
    from zerosearch.rl.launch import master_dtype
    from zerosearch.search.factory import make_engine

    bf16 = tmp_path / "policy_bf16"
    AutoModelForCausalLM.from_pretrained(micro_world / "models/base/policy").to(torch.bfloat16).save_pretrained(bf16)
    AutoTokenizer.from_pretrained(micro_world / "models/base/policy").save_pretrained(bf16)
    assert next(load_model(str(bf16))[0].parameters()).dtype == torch.bfloat16  # what dtype=None gives
    assert master_dtype(False) == torch.float32 and master_dtype(True) == "auto"

    cfg = micro_config(micro_world, "train.engine=bm25", "train.algorithm=ppo", "train.kl_coef=0.01",
                       "train.batch_prompts=2", "train.group_size=2", "train.mini_batch_size=4",
                       "train.micro_batch_size=2", "train.mixed_precision=bf16", f"base.policy_model={bf16}",
                       f"base.paths.models={tmp_path}/models")
    trainer = RLTrainer(cfg, make_engine(cfg, "bm25"), ROWS, checkpoint_dir=tmp_path / "ckpt")
    trainer.setup()
    assert trainer.accelerator.mixed_precision == "bf16"
    for name, model in {"policy": trainer.m.policy, "reference": trainer.m.reference, "critic": trainer.m.critic}.items():
        assert {p.dtype for p in model.parameters()} == {torch.float32}, name
    # B4: the critic's head has no dropout (transformers' fallback is 0.1, active in the update)
    dropouts = [m.p for m in trainer.m.critic.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and set(dropouts) == {0.0} and trainer.m.critic.config.classifier_dropout == 0.0
    before = [p.detach().clone() for p in trainer.m.policy.parameters()]
    batch, group = trainer.rollout(0)
    trainer.update(trainer.make_experience(batch, torch.tensor([1.0, 0.0, 0.0, 1.0]), group), step=0)
    after = list(trainer.m.policy.parameters())
    assert {p.dtype for p in after} == {torch.float32}
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


def launched_deepspeed_plugin(name: str, monkeypatch):
    """The DeepSpeedPlugin each process of `accelerate launch --config_file configs/accelerate/<name>`
    builds: the launcher's environment (as accelerate's launch_command prepares it), then the plugin
    from that environment, as Accelerator() does. No deepspeed import, no GPU."""
    from accelerate.commands.launch import (
        _validate_launch_command,
        launch_command_parser,
    )
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args = launch_command_parser().parse_args(["--config_file", str(REPO / "configs/accelerate" / name),
                                               "-m", "zerosearch.cli", "train"])
    args, defaults, _ = _validate_launch_command(args)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    for key, value in prepare_deepspeed_cmd_env(args)[1].items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    return DeepSpeedPlugin()


@pytest.mark.parametrize("name", ["deepspeed_zero2.yaml", "multinode_zero2.yaml"])
def test_deepspeed_gets_batch_accumulation_clipping_and_bf16_from_params_before_prepare(name, micro_world, tmp_path,
                                                                                          monkeypatch):
    """A1 + B2: with no dataloader, prepare needs integers where the launch configs leave "auto";
    the trainer writes them from params: one engine step per mini-batch, its clipping, its bf16."""
    import copy

    from zerosearch.lm import models

    plugin = launched_deepspeed_plugin(name, monkeypatch)
    assert plugin.is_auto("train_micro_batch_size_per_gpu")  # what made prepare raise (accelerator.py:2172-2197)
    cfg = micro_config(micro_world, "train.batch_prompts=4", "train.group_size=2", "train.mini_batch_size=8",
                       "train.micro_batch_size=2", "train.max_grad_norm=0.5", f"base.paths.models={tmp_path}/models")
    seen, loads = {}, []

    def prepare(*objs):
        seen.setdefault("config", copy.deepcopy(plugin.deepspeed_config))
        return objs

    acc = types.SimpleNamespace(process_index=0, num_processes=2, is_main_process=True, mixed_precision="bf16",
                                device=torch.device("cpu"), state=types.SimpleNamespace(deepspeed_plugin=plugin),
                                prepare=prepare, prepare_model=lambda model, **_: model, gradient_accumulation_steps=1)
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **kw: loads.append(kw["dtype"]) or real(*a, **kw))
    RLTrainer(cfg, None, ROWS, checkpoint_dir=tmp_path, accelerator=acc)._build_models(None)
    config = seen["config"]  # as it was when prepare got the policy
    # per process: 8 / 2 = 4 trajectories of each mini-batch, 2 micro-batches of 2
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (2, 2)
    assert config["train_batch_size"] == 8 == 2 * 2 * acc.num_processes  # DeepSpeed's own consistency check
    assert config["gradient_clipping"] == 0.5 and config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    assert acc.gradient_accumulation_steps == 2 and loads == ["auto"]  # DeepSpeed keeps the fp32 master weights
    # accelerate's _prepare_deepspeed then fills only "auto" entries (its gradient_clipping 1.0 among them)
    micro = plugin.get_value("train_micro_batch_size_per_gpu")
    plugin.deepspeed_config_process(must_match=False, gradient_clipping=1.0, train_micro_batch_size_per_gpu=micro,
                                    train_batch_size=micro * plugin.get_value("gradient_accumulation_steps") * 2)
    assert plugin.deepspeed_config["gradient_clipping"] == 0.5 and plugin.deepspeed_config["train_batch_size"] == 8


def test_deepspeed_values_for_the_paper_presets():
    from zerosearch.config import load_config
    from zerosearch.rl.launch import deepspeed_values

    t = load_config(REPO / "configs/paper/grpo-qwen2.5-3b-sft.yaml").train  # 256 per mini-batch, micro 16
    # a full mini-batch is 128 per process, 8 micro-batches; the remainder (64, 32 per process) is 2: the
    # engine steps where accelerate marks the boundary (sync_gradients), not after a count
    assert deepspeed_values(t, 2, "bf16") == {
        "train_micro_batch_size_per_gpu": 16, "gradient_accumulation_steps": 8, "train_batch_size": 256,
        "gradient_clipping": 1.0, "bf16": {"enabled": True}, "fp16": {"enabled": False}}
    assert deepspeed_values(t, 4, "no")["gradient_accumulation_steps"] == 4


def deepspeed_accelerator(plugin, n: int = 2):
    acc = fake_accelerator(0, n)
    acc.state.deepspeed_plugin = plugin
    return acc


@pytest.mark.parametrize("what", ["zero3", "ppo", "resume"])
def test_what_deepspeed_would_get_wrong_is_refused_at_trainer_start(what, tmp_path, monkeypatch):
    """A5/B6 (PPO: the critic in the policy's engine, its grad norm the policy's), A6 (resume: one
    process's ZeRO partition of the optimizer state), A7 (ZeRO-3: reference, decode loop, saving)."""
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(zero_stage=3) if what == "zero3" else launched_deepspeed_plugin("deepspeed_zero2.yaml",
                                                                                           monkeypatch)
    cfg = micro_config(tmp_path, *(["train.algorithm=ppo"] if what == "ppo" else []))
    expected = {"zero3": "ZeRO-3 is not supported.*deepspeed_zero2.yaml",
                "ppo": "ppo is not supported under DeepSpeed.*grpo, reinforce or reinforce_pp.*--multi_gpu",
                "resume": "--resume is not supported under DeepSpeed"}[what]
    with pytest.raises(ValueError, match=expected):
        trainer = RLTrainer(cfg, None, ROWS, checkpoint_dir=tmp_path, accelerator=deepspeed_accelerator(plugin))
        trainer.setup(resume=what == "resume")  # refused before any model is loaded
    # without DeepSpeed the same configs start (PPO, ZeRO-less resume)
    RLTrainer(cfg, None, ROWS, checkpoint_dir=tmp_path, accelerator=fake_accelerator(0, 2))


def test_checkpoints_under_deepspeed_leave_out_the_partitioned_optimizer_state(tmp_path, monkeypatch):
    """A6: a ZeRO optimizer's state_dict is this process's partition; the checkpoint holds None
    there, and a resume without DeepSpeed from it says why it cannot continue."""
    from zerosearch.rl.checkpoint import save_checkpoint

    plugin = launched_deepspeed_plugin("deepspeed_zero2.yaml", monkeypatch)
    cfg = micro_config(tmp_path)
    policy = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(policy.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    for acc, expected in ((deepspeed_accelerator(plugin), None), (fake_accelerator(0, 1), optimizer.state_dict())):
        trainer = RLTrainer(cfg, None, ROWS, checkpoint_dir=tmp_path, accelerator=acc)
        trainer.m = types.SimpleNamespace(optimizer=optimizer, scheduler=scheduler, critic_optimizer=None)
        assert trainer._trainer_state()["optimizer"] == expected
    ckpt = tmp_path / "ckpt"

    def save_policy(path, **_):  # a whole (if tiny) HF folder: the resume check finds nothing damaged
        from safetensors.torch import save_file

        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "config.json").write_text("{}")
        save_file({k: v.contiguous() for k, v in policy.state_dict().items()}, str(Path(path) / "model.safetensors"))

    save_checkpoint(ckpt, 1, policy=types.SimpleNamespace(save_pretrained=save_policy),
                    tokenizer=types.SimpleNamespace(save_pretrained=lambda *a, **k: None),
                    trainer_state={"optimizer": None, "scheduler": scheduler.state_dict()},
                    state={"config": cfg.model_dump(), "history": []})
    trainer = RLTrainer(cfg, None, ROWS, checkpoint_dir=ckpt, accelerator=fake_accelerator(0, 1))
    monkeypatch.setattr(trainer, "_build_models", lambda c: types.SimpleNamespace(optimizer=optimizer))
    with pytest.raises(ValueError, match="written under DeepSpeed and holds no optimizer state"):
        trainer.setup(resume=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only launch rule")
def test_several_processes_on_cpus_get_gloo_and_keep_deepspeed_when_launched_with_it():
    """cpu=True would drop an accelerate-launched DeepSpeed plugin (seen with deepspeed 0.19.8 on
    this CPU machine); DeepSpeed over gloo needs the process group's backend named instead."""
    from zerosearch.rl.launch import accelerator_launch_kwargs

    class Kwargs:
        def __init__(self, **kw):
            self.kw = kw

    assert accelerator_launch_kwargs({}, Kwargs) == {}  # one process: nothing added
    assert accelerator_launch_kwargs({"WORLD_SIZE": "1", "ACCELERATE_USE_DEEPSPEED": "true"}, Kwargs) == {}
    assert accelerator_launch_kwargs({"WORLD_SIZE": "2"}, Kwargs) == {"cpu": True}
    handlers = accelerator_launch_kwargs({"WORLD_SIZE": "2", "ACCELERATE_USE_DEEPSPEED": "true"}, Kwargs)
    assert list(handlers) == ["kwargs_handlers"] and handlers["kwargs_handlers"][0].kw == {"backend": "gloo"}
