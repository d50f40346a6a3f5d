"""Progress of long work, on a terminal and in a log.

On a terminal it is a live ``rich`` bar. When stdout is not a terminal (``make run | tee``,
``dvc repro`` in CI, a Prefect worker's log) a bar would print nothing until the end, so
``progress`` writes plain lines instead: one at the first update, then whenever
``every_s`` seconds have passed, and a heartbeat line from a background thread when one
step takes longer than that (``[train grpo] 3/40 ... still on step 4, 31 s``), so a piped log
never goes quiet for longer than ``every_s``. The last line is written when the work ends.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO

EVERY_S = 20.0  # seconds between lines in a log (the promise is a line at least every 30 s)


class Progress(Protocol):
    def update(self, advance: int = 1, info: str = "") -> None: ...


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    return f"{minutes}m{s:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class LineProgress:
    """``Progress`` as plain lines on ``stream`` (see the module doc)."""

    def __init__(self, desc: str, total: int, *, completed: int = 0, every_s: float = EVERY_S,
                 stream: TextIO | None = None, clock=time.monotonic):
        self.desc, self.total, self.done, self.every_s = desc, total, completed, every_s
        self.stream = stream if stream is not None else sys.stdout
        self.clock = clock
        self.info = ""
        self._start_done = completed
        self._t0 = self._last_line = self._last_update = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        parts = [f"[{self.desc}] {self.done}/{self.total}{pct}"]
        if self.info:
            parts.append(self.info)
        steps = self.done - self._start_done
        if steps > 0:
            per = (self._last_update - self._t0) / steps
            left = max(0, self.total - self.done) * per
            parts.append(f"{per:.2f} s/step, elapsed {_duration(now - self._t0)}, ETA {_duration(left)}")
        if self.done < self.total and now - self._last_update >= self.every_s:
            parts.append(f"still on step {self.done + 1}, {_duration(now - self._last_update)}")
        return " | ".join(parts)

    def _write(self, now: float) -> None:
        self.stream.write(self.line(now) + "\n")
        self.stream.flush()
        self._last_line = now

    def update(self, advance: int = 1, info: str = "") -> None:
        with self._lock:
            now = self.clock()
            first = self.done == self._start_done
            self.done += advance
            self.info = info or self.info
            self._last_update = now
            if first or now - self._last_line >= self.every_s or self.done >= self.total:
                self._write(now)

    def heartbeat(self) -> None:
        """Write a line when nothing was written for ``every_s`` (called by the thread)."""
        with self._lock:
            now = self.clock()
            if now - self._last_line >= self.every_s:
                self._write(now)

    def __enter__(self) -> LineProgress:  # noqa: PYI034 (Python 3.10 has no typing.Self)
        with self._lock:
            self._write(self.clock())  # the start: the work is named before its first step
        self._thread = threading.Thread(target=self._beat, name=f"progress-{self.desc}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.every_s)):
            self.heartbeat()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self.done < self.total or self._last_line < self._last_update:
                self._write(self.clock())


class _RichProgress:
    def __init__(self, bar, task):
        self.bar, self.task = bar, task

    def update(self, advance: int = 1, info: str = "") -> None:
        self.bar.update(self.task, advance=advance, info=info)


@contextmanager
def progress(desc: str, total: int, *, completed: int = 0, stream: TextIO | None = None,
             every_s: float = EVERY_S) -> Iterator[Progress]:
    """A live bar on a terminal, plain lines at least every ``every_s`` seconds otherwise."""
    out = stream if stream is not None else sys.stdout
    if not out.isatty():
        with LineProgress(desc, total, completed=completed, every_s=every_s, stream=out) as p:
            yield p
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichBar

    with RichBar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                 TextColumn("{task.fields[info]}"), TimeRemainingColumn()) as bar:
        yield _RichProgress(bar, bar.add_task(desc, total=total, completed=completed, info=""))
