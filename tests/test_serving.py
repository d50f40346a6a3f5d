"""Simulator server lifecycle: command lines, ports, start/health/stop with a fake server
(``tests/fake_server.py``), the ``url`` backend, and one real ``transformers serve`` round trip."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from zerosearch.search.client import SimulatorClient, SimulatorRequestError
from zerosearch.serving import (ServerSpec, ServerStartError, free_port, health_ok, port_in_use,
                                serve_simulator, server_command)

FAKE = str(Path(__file__).with_name("fake_server.py"))


def fake_spec(*args: str, **kw) -> ServerSpec:
    cmd = (sys.executable, FAKE, "--host", "{host}", "--port", "{port}", *args)
    return ServerSpec(backend="transformers", model="fake", command=cmd, **kw)


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def read_pid(path: Path, timeout: float = 5.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.02)
    raise AssertionError(f"{path} was not written")


def wait_gone(*pids: int, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.02)
    return False


# ---------------------------------------------------------------- command lines and specs


def test_command_lines_per_backend():
    tf = server_command(ServerSpec("transformers", "/m/sim", port=9), 8001)
    assert tf == [str(Path(sys.executable).parent / "transformers"), "serve", "/m/sim",
                  "--host", "127.0.0.1", "--port", "8001"]
    sg = server_command(ServerSpec("sglang", "Qwen/Qwen2.5-3B", host="0.0.0.0", tp=2, dp=4,
                                   extra_args=("--mem-fraction-static", "0.7")), 6001)
    assert sg == [sys.executable, "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen2.5-3B",
                  "--host", "0.0.0.0", "--port", "6001", "--tp", "2", "--dp", "4",
                  "--mem-fraction-static", "0.7"]
    vl = server_command(ServerSpec("vllm", "Qwen/Qwen2.5-3B", tp=2, dp=3), 6002)
    assert Path(vl[0]).name == "vllm"
    assert vl[1:] == ["serve", "Qwen/Qwen2.5-3B", "--host", "127.0.0.1", "--port", "6002",
                      "--tensor-parallel-size", "2", "--data-parallel-size", "3"]
    tf_extra = server_command(ServerSpec("transformers", "m", extra_args=["--device", "cpu"]), 1)
    assert tf_extra[-2:] == ["--device", "cpu"]


def test_command_override_substitutes_host_and_port():
    spec = ServerSpec("vllm", "m", host="127.0.0.2", command=("srv", "--bind", "{host}:{port}"),
                      extra_args=("-v",))
    assert server_command(spec, 1234) == ["srv", "--bind", "127.0.0.2:1234", "-v"]


def test_spec_validation():
    with pytest.raises(ValueError, match="backend"):
        ServerSpec("ollama", "m")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spec.url"):
        ServerSpec("url", "m")
    with pytest.raises(ValueError, match="tp and dp"):
        ServerSpec("sglang", "m", tp=0)
    with pytest.raises(ValueError, match="port"):
        ServerSpec("sglang", "m", port=70000)
    with pytest.raises(ValueError, match="no command"):
        server_command(ServerSpec("url", "m", url="http://x/v1"), 1)
    with pytest.raises(ValueError, match="sglang or vllm"):
        server_command(ServerSpec("transformers", "m", dp=2), 1)
    spec = ServerSpec("transformers", "m", env={"A": "1"})
    assert spec == ServerSpec("transformers", "m", env={"A": "1"}) and hash(spec)


# ---------------------------------------------------------------- ports


def test_free_port_is_bindable_and_port_in_use():
    port = free_port()
    assert not port_in_use("127.0.0.1", port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert port_in_use("127.0.0.1", port)
    assert not port_in_use("127.0.0.1", port)


def test_busy_user_port_is_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        spec = fake_spec("--pid-file", str(tmp_path / "pid"), port=port)
        with pytest.raises(ServerStartError, match=f"port {port} .* already in use"):
            with serve_simulator(spec, startup_timeout=5):
                pass
    assert not (tmp_path / "pid").exists()  # nothing was started


# ---------------------------------------------------------------- lifecycle with the fake server


def test_auto_port_taken_before_bind_is_retried(tmp_path, monkeypatch):
    import zerosearch.serving as serving

    with socket.socket() as taken:  # bound, not listening: the server's bind fails at once
        taken.bind(("127.0.0.1", 0))
        ports = iter([taken.getsockname()[1]])
        monkeypatch.setattr(serving, "free_port", lambda host="127.0.0.1": next(ports, None) or free_port(host))
        with serve_simulator(fake_spec(), startup_timeout=20, log_path=tmp_path / "s.log",
                             poll_interval=0.1) as url:
            assert health_ok(url) and not url.endswith(f":{taken.getsockname()[1]}/v1")
    assert "Address already in use" in (tmp_path / "s.log").read_text()



def test_serves_then_stops_process_group(tmp_path, caplog):
    pid_file, child_file, log = tmp_path / "pid", tmp_path / "child", tmp_path / "server.log"
    spec = fake_spec("--delay", "0.5", "--pid-file", str(pid_file), "--child-pid-file", str(child_file))
    with caplog.at_level(logging.INFO, logger="zerosearch.serving"):
        with serve_simulator(spec, startup_timeout=20, log_path=log, poll_interval=0.1) as url:
            assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
            assert health_ok(url)
            pid, child = read_pid(pid_file), read_pid(child_file)
            assert alive(pid) and alive(child)
            with SimulatorClient(url, model="fake", max_retries=0) as client:
                assert client.complete(["hi"], max_tokens=4, temperature=1.0) == ["echo: hi"]
    assert wait_gone(pid, child), "server or its child outlived the context"
    assert not health_ok(url, timeout=0.5)
    assert "listening on" in log.read_text()
    assert FAKE in caplog.text and url in caplog.text  # the command and the URL are logged


def test_early_exit_reports_code_and_log_tail(tmp_path):
    with pytest.raises(ServerStartError) as err:
        with serve_simulator(fake_spec("--mode", "exit"), startup_timeout=20,
                             log_path=tmp_path / "s.log", poll_interval=0.1):
            pytest.fail("must not yield")
    assert "code 3" in str(err.value)
    assert "FATAL: fake model weights not found" in str(err.value)


def test_never_healthy_times_out_and_kills(tmp_path):
    pid_file = tmp_path / "pid"
    start = time.monotonic()
    with pytest.raises(ServerStartError, match="within 1.5s; killed it"):
        with serve_simulator(fake_spec("--mode", "never", "--pid-file", str(pid_file)),
                             startup_timeout=1.5, log_path=tmp_path / "s.log", poll_interval=0.1):
            pytest.fail("must not yield")
    assert time.monotonic() - start < 8
    assert wait_gone(read_pid(pid_file))


def test_keyboard_interrupt_stops_server(tmp_path):
    pid_file, child_file = tmp_path / "pid", tmp_path / "child"
    spec = fake_spec("--pid-file", str(pid_file), "--child-pid-file", str(child_file))
    with pytest.raises(KeyboardInterrupt):
        with serve_simulator(spec, startup_timeout=20, log_path=tmp_path / "s.log", poll_interval=0.1):
            pid, child = read_pid(pid_file), read_pid(child_file)
            raise KeyboardInterrupt
    assert wait_gone(pid, child)


def test_sigterm_ignored_escalates_to_sigkill(tmp_path):
    pid_file = tmp_path / "pid"
    spec = fake_spec("--ignore-term", "--pid-file", str(pid_file))
    with serve_simulator(spec, startup_timeout=20, log_path=tmp_path / "s.log",
                         poll_interval=0.1, stop_timeout=0.5):
        pid = read_pid(pid_file)
    assert wait_gone(pid, timeout=1.0)


def test_default_log_is_a_temp_file(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="zerosearch.serving"):
        with serve_simulator(fake_spec(), startup_timeout=20, poll_interval=0.1):
            pass
    logs = [w for rec in caplog.records for w in rec.getMessage().split() if w.endswith(".log")]
    assert logs, caplog.text
    path = Path(logs[0])
    assert "listening on" in path.read_text()
    path.unlink()


# ---------------------------------------------------------------- backend "url"


def test_url_backend_uses_a_live_server_without_stopping_it(tmp_path):
    pid_file = tmp_path / "pid"
    with serve_simulator(fake_spec("--pid-file", str(pid_file)), startup_timeout=20,
                         log_path=tmp_path / "s.log", poll_interval=0.1) as url:
        with serve_simulator(ServerSpec("url", "fake", url=url + "/"), startup_timeout=5) as got:
            assert got == url
        assert alive(read_pid(pid_file)) and health_ok(url)


def test_url_backend_pointing_at_nothing_fails(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    start = time.monotonic()
    with pytest.raises(ServerStartError, match="nothing was started"):
        with serve_simulator(ServerSpec("url", "m", url=url), startup_timeout=0.5, poll_interval=0.1):
            pytest.fail("must not yield")
    assert time.monotonic() - start < 5


# ---------------------------------------------------------------- a real transformers serve


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from zerosearch.lm.models import train_tokenizer

    path = tmp_path_factory.mktemp("tiny_sim") / "model"
    tok = train_tokenizer(["Doc 1: the capital of France is Paris.",
                           "Doc 2: water boils at 100 degrees."] * 10, 300)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=256,
                      tie_word_embeddings=False, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_transformers_serve_round_trip(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir)
    spec = ServerSpec("transformers", model, env={"HF_HUB_OFFLINE": "1"})
    start = time.monotonic()
    with serve_simulator(spec, startup_timeout=120, log_path=tmp_path / "serve.log", poll_interval=0.2) as url:
        startup = time.monotonic() - start
        with SimulatorClient(url, model=model, max_retries=0, timeout=60) as client:
            out = client.complete(["Doc 1:"], max_tokens=8, temperature=1.0)
            assert len(out) == 1 and isinstance(out[0], str) and out[0]
        with SimulatorClient(url, model=model, api="chat", max_retries=0, timeout=60) as chat:
            out = chat.complete(["Who wrote Hamlet?"], max_tokens=8, temperature=1.0)
            assert len(out) == 1 and isinstance(out[0], str)
        # the server is pinned to the name it was given: the path, exactly
        with SimulatorClient(url, model="tiny", max_retries=0) as wrong:
            with pytest.raises(SimulatorRequestError, match="pinned"):
                wrong.complete(["Doc 1:"], max_tokens=2, temperature=1.0)
    total = time.monotonic() - start
    print(f"transformers serve: healthy after {startup:.1f}s, round trip {total:.1f}s")
    assert total < 120
