"""DeepSpeed itself on this CPU machine (when installed): one ZeRO-2 step as the trainer drives
it. Skipped without deepspeed (it is not a default dependency; seen working with deepspeed
0.19.8 installed with DS_BUILD_OPS=0, whose CPU accelerator communicates over gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_one_zero2_step_through_accelerate_steps_the_engine_once_per_mini_batch(tmp_path):
    pytest.importorskip("deepspeed")
    launcher = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([str(launcher), "launch", "--config_file", str(REPO / "configs/accelerate/deepspeed_zero2.yaml"),
                          "--num_processes", "1", "--main_process_port", "0", str(REPO / "tests/deepspeed_step.py"),
                          str(REPO / "params.yaml")], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (result["engine"], result["zero_stage"], result["gas"], result["micro"]) == ("DeepSpeedEngine", 2, 2, 2)
    assert result["steps_after_each_micro_batch"] == [0, 1]  # no step on the first micro-batch, one on the last
    assert result["steps_after_a_one_micro_batch_remainder"] == 2  # a smaller last mini-batch steps too
    assert result["weights_moved"] > 0
    # the step's gradient is the mean loss over the whole mini-batch (fp32: equal up to rounding)
    assert result["grad_norm"] == pytest.approx(result["reference_grad_norm"], rel=1e-4)
