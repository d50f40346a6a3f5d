"""Wall-clock seconds per named phase of a unit of work (a training step): sections timed in
place, and methods of a collaborator (a generator, an engine, a completer) timed through a
delegating proxy, so the collaborator's code knows nothing of the timing."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any


class PhaseTimer:
    """Accumulates seconds per phase name until ``take`` returns and clears them."""

    def __init__(self) -> None:
        self._seconds: defaultdict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] += time.perf_counter() - t0

    def wrap(self, obj: Any, methods: Mapping[str, str]) -> Any:
        """``obj`` with each method in ``methods`` (method name -> phase name) timed; every
        other attribute is ``obj``'s own."""
        return _Timed(obj, self, dict(methods))

    def take(self) -> dict[str, float]:
        """The seconds per phase since the last ``take``; the timer starts again from zero."""
        out, self._seconds = dict(self._seconds), defaultdict(float)
        return out


class _Timed:
    def __init__(self, obj: Any, timer: PhaseTimer, methods: dict[str, str]) -> None:
        self._obj, self._timer, self._methods = obj, timer, methods

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._obj, name)
        phase = self._methods.get(name)
        if phase is None or not callable(attr):
            return attr

        def timed(*args, **kwargs):
            with self._timer.section(phase):
                return attr(*args, **kwargs)

        return timed
