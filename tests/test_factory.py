import pytest

from tests.conftest import micro_config
from zerosearch.search.bm25 import BM25Engine
from zerosearch.search.factory import make_engine, server_spec
from zerosearch.search.hybrid import HybridEngine
from zerosearch.search.simulated import SimulatedEngine
from zerosearch.serving import server_command
from zerosearch.stages import data as data_stage


def test_make_engine_by_name(tmp_path):
    cfg = micro_config(tmp_path)
    data_stage.run(cfg)
    assert isinstance(make_engine(cfg, "bm25"), BM25Engine)
    sim = make_engine(cfg, "simulated", simulator_url="http://127.0.0.1:9/v1", total_steps=10)
    assert isinstance(sim, SimulatedEngine) and sim.total_steps == 10
    assert sim.completer.model == str(cfg.path("models") / "simulator_sft")  # the SFT stage's output
    assert sim.completer.api == "completions" and sim.top_k == cfg.search.top_k
    hybrid = make_engine(cfg, "hybrid", simulator_url="http://127.0.0.1:9/v1")
    assert isinstance(hybrid, HybridEngine) and hybrid.real_fraction == cfg.simulator.hybrid_real_fraction
    with pytest.raises(ValueError, match="needs a simulator server URL"):
        make_engine(micro_config(tmp_path, "simulator.backend=transformers"), "simulated")
    with pytest.raises(FileNotFoundError):  # inprocess (the default) loads the simulator, here not built
        make_engine(cfg, "simulated")
    with pytest.raises(ValueError, match="unknown engine 'google'"):
        make_engine(cfg, "google")


def test_prompt_mode_uses_chat_and_paper_presets_serve_the_released_simulator(tmp_path):
    cfg = micro_config(tmp_path, "simulator.prompt=zerosearch-prompt", "simulator.api=chat",
                       "simulator.system_message=''", "simulator_sft.enabled=false",
                       "base.simulator_model=Qwen/Qwen2.5-14B-Instruct")
    sim = make_engine(cfg, "simulated", simulator_url="http://127.0.0.1:9/v1")
    assert sim.completer.api == "chat" and sim.completer.model == "Qwen/Qwen2.5-14B-Instruct"
    assert sim.completer.system_message == "" and sim.template.name == "zerosearch-prompt"
    spec = server_spec(micro_config(tmp_path, "simulator.backend=sglang", "simulator.tp=2", "simulator.dp=2",
                                    "simulator.server_args=[--mem-fraction-static, '0.8']",
                                    "simulator.cuda_visible_devices=0,1"))
    assert (spec.backend, spec.tp, spec.dp, spec.extra_args) == ("sglang", 2, 2, ("--mem-fraction-static", "0.8"))
    assert server_command(spec, 6001)[-2:] == ["--mem-fraction-static", "0.8"]
    assert spec.env == {"CUDA_VISIBLE_DEVICES": "0,1"}
    vllm = server_spec(micro_config(tmp_path, "simulator.backend=vllm", "simulator.cuda_visible_devices=3",
                                    "simulator.server_args=[--gpu-memory-utilization, '0.85']"))
    assert server_command(vllm, 6001)[-2:] == ["--gpu-memory-utilization", "0.85"]
    assert vllm.env == {"CUDA_VISIBLE_DEVICES": "3"}  # a YAML int, the variable's text
    assert cfg.simulator.backend == "inprocess"  # the tiny default: nothing to serve
    with pytest.raises(ValueError, match="no server to start"):
        server_spec(cfg)
    tiny = server_spec(micro_config(tmp_path, "simulator.backend=transformers"))
    assert tiny.backend == "transformers" and "--continuous-batching" in tiny.extra_args and tiny.env is None
