"""Progress when the output is a log, not a terminal: lines at the start, every interval,
a heartbeat inside a long step, and at the end."""

import io
import threading

from zerosearch.progress import LineProgress, progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_lines_at_start_first_step_interval_and_end():
    out, clock = io.StringIO(), Clock()
    p = LineProgress("train grpo", 10, every_s=30, stream=out, clock=clock)
    p._write(clock())  # what __enter__ writes, without the heartbeat thread
    for _ in range(10):
        clock.now += 10
        p.update(1, info="reward 0.5")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[train grpo] 0/10 (0%)"
    assert lines[1].startswith("[train grpo] 1/10 (10%) | reward 0.5 | 10.00 s/step")
    # then a line whenever 30 s passed since the last one, and the last step
    assert [ln.split(" ")[2] for ln in lines[2:]] == ["4/10", "7/10", "10/10"]
    assert "ETA 0s" in lines[-1]


def test_heartbeat_inside_a_long_step_names_the_wait():
    out, clock = io.StringIO(), Clock()
    p = LineProgress("base policy", 5, completed=2, every_s=30, stream=out, clock=clock)
    clock.now = 29
    p.heartbeat()
    assert out.getvalue() == ""
    clock.now = 31
    p.heartbeat()
    assert out.getvalue().strip() == "[base policy] 2/5 (40%) | still on step 3, 31s"


def test_piped_progress_writes_lines_and_stops_its_thread():
    out = io.StringIO()  # not a terminal
    before = threading.active_count()
    with progress("evaluate agent", 3, stream=out, every_s=0.05) as p:
        for _ in range(3):
            p.update(1)
    text = out.getvalue()
    assert text.splitlines()[0] == "[evaluate agent] 0/3 (0%)"
    assert "[evaluate agent] 3/3 (100%)" in text
    assert threading.active_count() == before


def test_a_run_stopped_early_still_says_where_it_stopped():
    out = io.StringIO()
    try:
        with progress("train", 10, stream=out, every_s=60) as p:
            p.update(1)
            p.update(1)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert out.getvalue().splitlines()[-1].startswith("[train] 2/10 (20%)")
