import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import params_presets
from zerosearch.cli import app
from zerosearch.config import ConfigError, apply_overrides, load_config

REPO = Path(__file__).resolve().parents[1]
PRESETS = params_presets()
PAPER = sorted(p for p in (REPO / "configs" / "paper").glob("*.yaml") if p.name != "base.yaml")


def write(tmp_path, data, name="bad.yaml"):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in data.items():
        node = raw
        *head, last = dotted.split(".")
        for k in head:
            node = node[k]
        node[last] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("path", [REPO / "params.yaml", *PRESETS], ids=lambda p: p.name)
def test_params_and_every_preset_validate(path):
    cfg = load_config(path)
    assert cfg.base.seed == 0


def test_paper_presets_carry_the_papers_values():
    names = {p.stem for p in (REPO / "configs" / "paper").glob("*.yaml")} - {"base"}  # base: the shared overlay base
    assert names == {f"{a}-{m}-{s}" for a in ("grpo", "ppo", "reinforce")
                     for m in ("qwen2.5-3b", "llama3.2-3b") for s in ("sft", "prompt")} | {
        "grpo-qwen2.5-7b-sft", "grpo-qwen2.5-7b-prompt", "ppo-qwen2.5-7b-sft", "reinforce-qwen2.5-7b-sft",
        "grpo-qwen2.5-3b-instruct-sft"}
    for path in PAPER:  # the preset name is the file name
        cfg = load_config(path)
        assert cfg.base.preset == path.stem and cfg.train.rollout_backend == "vllm"
    qwen7 = load_config(REPO / "configs/paper/grpo-qwen2.5-7b-sft.yaml")
    assert qwen7.base.policy_model == "Qwen/Qwen2.5-7B" and qwen7.simulator.curriculum.p_end == 0.75
    instruct = load_config(REPO / "configs/paper/grpo-qwen2.5-3b-instruct-sft.yaml")
    assert instruct.base.policy_model == "Qwen/Qwen2.5-3B-Instruct"
    # the reference: the chat template whenever the tokenizer has one, base or instruct; its turn
    # budget (5 searches with documents + the answer turn), corrective message and layout
    for c in (instruct, qwen7):
        assert c.base.chat_prompt == "auto" and c.train.max_turns == 5
        assert (c.train.corrective_message, c.train.information_layout) == ("reference", "reference")
    tiny = load_config(REPO / "params.yaml")
    assert tiny.base.chat_prompt is False and tiny.train.max_turns == 3  # 3 searches + answer, as before
    assert (tiny.train.corrective_message, tiny.train.information_layout) == ("ours", "ours")
    qwen = load_config(REPO / "configs/paper/grpo-qwen2.5-3b-sft.yaml")
    assert (qwen.simulator.curriculum.p_start, qwen.simulator.curriculum.p_end) == (0.0, 0.25)
    assert qwen.simulator.curriculum.base == 4.0
    assert (qwen.train.total_steps, qwen.train.lr, qwen.train.group_size) == (203, 1e-6, 5)
    assert (qwen.train.kl_coef, qwen.train.kl_estimator, qwen.train.clip_ratio) == (0.001, "k3", 0.2)
    assert qwen.base.simulator_model == "sunhaonlp/SearchSimulation_14B"
    assert qwen.data.source == "hub" and len(qwen.data.benchmarks) == 7
    llama = load_config(REPO / "configs/paper/ppo-llama3.2-3b-prompt.yaml")
    assert (llama.simulator.curriculum.p_start, llama.simulator.curriculum.p_end) == (0.25, 0.5)
    assert llama.train.algorithm == "ppo" and llama.simulator.prompt == "zerosearch-prompt"
    assert (llama.train.critic_lr, llama.train.gamma, llama.train.lam) == (1e-5, 1.0, 1.0)
    assert load_config(REPO / "configs/paper/reinforce-qwen2.5-3b-sft.yaml").train.algorithm == "reinforce"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"train.total_stepz": 3}, r"train\.total_stepz: unknown key"),
        ({"train.total_steps": 0}, r"train\.total_steps: Input should be greater than 0"),
        ({"train.total_steps": "many"}, r"train\.total_steps: Input should be a valid integer"),
        ({"simulator.curriculum.p_end": 1.5}, r"simulator\.curriculum\.p_end: Input should be less than or equal to 1"),
        ({"simulator.curriculum.p_start": 0.6, "simulator.curriculum.p_end": 0.2},
         r"simulator\.curriculum: Value error, p_start \(0\.6\) must be <= p_end \(0\.2\)"),
        ({"simulator.curriculum.schedule": "linear"},
         r"simulator\.curriculum\.schedule: Input should be 'exponential' or 'fixed'"),
        # fixed reads p_end only, but the one rule p_start <= p_end holds under every schedule
        ({"simulator.curriculum.schedule": "fixed", "simulator.curriculum.p_start": 0.6,
          "simulator.curriculum.p_end": 0.2},
         r"simulator\.curriculum: Value error, p_start \(0\.6\) must be <= p_end \(0\.2\)"),
        # simulator_sft.init: scratch is the tiny world's, inside a running SFT stage, in its model's window
        ({"simulator_sft.init": "scratch", "tiny_models.build": False},
         r"simulator_sft\.init: scratch pretrains a tiny simulator .* needs tiny_models\.build: true"),
        ({"simulator_sft.init": "scratch", "simulator_sft.enabled": False},
         r"simulator_sft\.init: scratch builds the simulator in the simulator_sft stage"),
        ({"simulator_sft.scratch.shape.max_position": 256},
         r"simulator_sft\.scratch: Value error, pretrain\.seq_len must be <= shape\.max_position"),
        ({"simulator_sft.init": "scratch", "simulator_sft.scratch.shape.max_position": 256,
          "simulator_sft.scratch.pretrain.seq_len": 128},
         r"simulator_sft: Value error, init: scratch fine-tunes a model of scratch\.shape: train\.seq_len"),
        ({"simulator_sft.init": "copy"}, r"simulator_sft\.init: Input should be 'policy_copy' or 'scratch'"),
        ({"data.world.two_hop_fraction": -0.1}, r"data\.world\.two_hop_fraction: Input should be greater than or equal to 0"),
        ({"tiny_models.policy.num_heads": 3}, r"tiny_models\.policy: Value error, hidden_size must be divisible"),
        ({"data.in_domain": ["nq"]}, r"data: Value error, in_domain names benchmarks not in data\.benchmarks"),
    ],
)
def test_bad_values_name_the_key_and_the_file(tmp_path, change, message):
    path = write(tmp_path, change)
    with pytest.raises(ConfigError, match=message) as e:
        load_config(path)
    assert str(path) in str(e.value)


def test_ablation_switches_default_to_todays_behaviour_and_scratch_is_refused_outside_the_tiny_world():
    """The ablation keys (a replication study flips them): the tiny world and the paper presets
    run the paper's method; a simulator from scratch needs the tiny world."""
    for path in (REPO / "params.yaml", REPO / "configs" / "paper" / "base.yaml"):
        cfg = load_config(path)
        assert cfg.simulator.curriculum.schedule == "exponential" and cfg.train.mask_observations is True
        assert cfg.simulator_sft.init == "policy_copy"
    scratch = load_config(REPO / "params.yaml", ["simulator_sft.init=scratch"])
    assert scratch.simulator_sft.scratch.shape.hidden_size == 256
    with pytest.raises(ConfigError, match=r"needs tiny_models\.build: true; outside the tiny world use "
                                          r"simulator_sft\.init: policy_copy"):
        load_config(REPO / "configs" / "paper" / "base.yaml", ["simulator_sft.init=scratch"])


def test_missing_key_is_an_error(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    del raw["train"]["lr"]
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"train\.lr: Field required"):
        load_config(path)


def test_overrides_parse_yaml_values_and_reject_unknown_keys():
    cfg = load_config(REPO / "params.yaml", ["train.total_steps=50", "train.algorithm=ppo",
                                             "data.benchmarks=[tiny_single, tiny_multi]"])
    assert cfg.train.total_steps == 50 and cfg.train.algorithm == "ppo"
    assert cfg.data.benchmarks == ["tiny_single", "tiny_multi"]
    with pytest.raises(ConfigError, match=r"train\.nope: unknown key"):
        load_config(REPO / "params.yaml", ["train.nope=1"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(REPO / "params.yaml", ["train.total_steps"])
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        apply_overrides({"base": {"seed": 1}}, ["base.seed.x=2"], "f.yaml")


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("base: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(bad)


def test_every_key_in_params_yaml_has_a_comment():
    lines = (REPO / "params.yaml").read_text().splitlines()
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^\s*([a-z_0-9]+):", line)
        if m and not lines[i - 1].strip().startswith("#"):
            missing.append(f"line {i + 1}: {m.group(1)}")
    assert not missing, missing


def test_cli_validate_exits_nonzero_naming_key_and_file(tmp_path):
    path = write(tmp_path, {"simulator.curriculum.p_start": 2})
    result = CliRunner().invoke(app, ["config", "validate", str(path)])
    assert result.exit_code == 2
    assert "simulator.curriculum.p_start" in result.output and "bad.yaml" in result.output
    ok = CliRunner().invoke(app, ["config", "validate", str(REPO / "params.yaml")])
    assert ok.exit_code == 0 and "ok" in ok.output


def test_cli_stage_rejects_bad_override_before_running(tmp_path):
    result = CliRunner().invoke(app, ["data", "--params", str(REPO / "params.yaml"), "--set", "data.world.n_entities=5"])
    assert result.exit_code == 2
    assert "data.world.n_entities" in result.output


@pytest.mark.parametrize("name", ["deepspeed_zero2.yaml", "multinode_zero2.yaml"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO / "configs" / "accelerate" / name))
    assert cfg.distributed_type == "DEEPSPEED" and cfg.mixed_precision == "bf16"
    assert cfg.deepspeed_config["zero_stage"] == 2


# Presets as overlays ---------------------------------------------------------------------------



@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_presets_are_small_overlays_of_the_paper_base(path):
    raw = yaml.safe_load(path.read_text())
    assert raw["extends"] == "base.yaml"
    keys = [k for k in _flat(raw) if k != "extends"]
    assert "base.preset" in keys and len(keys) <= 12, keys  # only what differs from the base
    assert load_config(path).base.preset == path.stem


def _flat(d, prefix=""):
    out = []
    for k, v in d.items():
        out += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def test_the_paper_base_and_params_yaml_are_complete_and_tiny_is_params_yaml():
    for complete in (REPO / "params.yaml", REPO / "configs/paper/base.yaml"):
        assert "extends" not in yaml.safe_load(complete.read_text())
    assert load_config(REPO / "configs/tiny.yaml") == load_config(REPO / "params.yaml")


def test_an_overlay_changes_only_what_it_names(tmp_path):
    (tmp_path / "child.yaml").write_text(f"extends: {REPO / 'params.yaml'}\ntrain:\n  total_steps: 7\n"
                                         "data:\n  benchmarks: [tiny_single]\n  in_domain: [tiny_single]\n")
    child, parent = load_config(tmp_path / "child.yaml"), load_config(REPO / "params.yaml")
    assert child.train.total_steps == 7 and child.data.benchmarks == ["tiny_single"]  # lists replace
    assert child.train.lr == parent.train.lr and child.data.world == parent.data.world  # sections merge
    grandchild = tmp_path / "sub" / "grandchild.yaml"
    grandchild.parent.mkdir()
    grandchild.write_text("extends: ../child.yaml\ntrain:\n  lr: 0.5\n")  # relative to its own directory
    g = load_config(grandchild)
    assert (g.train.total_steps, g.train.lr) == (7, 0.5)


def test_an_overlays_unknown_key_names_the_overlay_file(tmp_path):
    (tmp_path / "typo.yaml").write_text(f"extends: {REPO / 'params.yaml'}\ntrain:\n  totl_steps: 7\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown key train\.totl_steps"):
        load_config(tmp_path / "typo.yaml")
    (tmp_path / "flat.yaml").write_text(f"extends: {REPO / 'params.yaml'}\ntrain: 3\n")
    with pytest.raises(ConfigError, match=r"flat\.yaml: train must be a section"):
        load_config(tmp_path / "flat.yaml")


def test_an_extends_cycle_or_a_missing_parent_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*gone\.yaml"):
        load_config(tmp_path / "orphan.yaml")


def test_config_show_prints_the_resolved_preset_as_a_complete_params_file(tmp_path):
    result = CliRunner().invoke(app, ["config", "show", "--params", str(REPO / "configs/paper/ppo-qwen2.5-7b-sft.yaml"),
                                      "--set", "train.total_steps=5"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert "extends" not in shown and shown["train"]["algorithm"] == "ppo" and shown["train"]["total_steps"] == 5
    assert shown["base"]["policy_model"] == "Qwen/Qwen2.5-7B"
    (tmp_path / "params.yaml").write_text(result.output)  # usable as a complete params file
    assert load_config(tmp_path / "params.yaml") == load_config(REPO / "configs/paper/ppo-qwen2.5-7b-sft.yaml",
                                                                ["train.total_steps=5"])


@pytest.mark.parametrize("override, message", [
    ("train.total_steps=true", "total_steps: expected int, got True"),
    ("train.lr=false", "lr: expected float, got False"),
    ("base.chat_prompt=1", "chat_prompt: expected 'auto' or bool, got 1"),
    ("simulator_sft.enabled=1", "enabled: expected bool, got 1"),
    ("simulator.url=true", "url: expected str or null, got True"),
])
def test_a_boolean_is_not_a_number_and_a_number_not_a_boolean(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "params.yaml", [override])
