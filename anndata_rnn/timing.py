"""Wall time per phase of a run (reading, preprocessing, training, baselines, inference, writing).

A run opens a :func:`recording`; the code marks its phases with :func:`phase` (a context manager)
or :func:`timed` (a decorator). Phases nest: time is charged to the innermost open phase only
(reading rows inside an encoding is "reading", not "preprocessing" too), so the phases never
count a second twice and their sum is at most the recorded total. Outside a recording a phase
costs two ``perf_counter`` calls and records nothing.

The result is a dict of plain floats (seconds), stored in ``uns[key]["timings"]``:
one entry per phase that ran, ``other`` (the rest of the recorded span) and ``total``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from contextvars import ContextVar

#: the phases in the order a run goes through them (reports list them so)
PHASES = (
    "reading",
    "preprocessing",
    "baselines",
    "training",
    "inference",
    "attribution",
    "writing",
)


class Recorder:
    """Exclusive wall time per phase of one recording."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}
        #: the open phases, innermost last: [name, time its current slice started]
        self.stack: list[list] = []

    def _charge(self, name: str, since: float, now: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, now - since)

    def enter(self, name: str) -> None:
        now = time.perf_counter()
        if self.stack:
            outer = self.stack[-1]
            self._charge(outer[0], outer[1], now)
        self.stack.append([name, now])

    def exit(self) -> None:
        now = time.perf_counter()
        name, since = self.stack.pop()
        self._charge(name, since, now)
        if self.stack:
            self.stack[-1][1] = now

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, float(seconds))

    def as_dict(self) -> dict[str, float]:
        """Plain floats: the phases that ran (in :data:`PHASES` order), ``other``, ``total``."""
        total = time.perf_counter() - self.start
        names = [p for p in PHASES if p in self.seconds]
        names += sorted(set(self.seconds) - set(names))
        out = {name: float(round(self.seconds[name], 6)) for name in names}
        spent = sum(out.values())
        out["other"] = float(round(max(0.0, total - spent), 6))
        out["total"] = float(round(max(total, spent + out["other"]), 6))
        return out


_current: ContextVar[Recorder | None] = ContextVar("anndata_rnn_timing", default=None)


def current() -> Recorder | None:
    return _current.get()


@contextlib.contextmanager
def recording() -> Iterator[Recorder]:
    """Record the phases of the enclosed code; nested recordings share the outer one (the
    command line opens one before reading the file, the tool's own then adds to it)."""
    outer = _current.get()
    if outer is not None:
        yield outer
        return
    recorder = Recorder()
    token = _current.set(recorder)
    try:
        yield recorder
    finally:
        _current.reset(token)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    recorder = _current.get()
    if recorder is None:
        yield
        return
    recorder.enter(name)
    try:
        yield
    finally:
        recorder.exit()


def timed(name: str):
    """Decorator: the function's calls are phase ``name``."""

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with phase(name):
                return func(*args, **kwargs)

        return wrapper

    return decorate


def own_part(record: dict | None) -> str | None:
    """Where this run's entries go inside ``record``: ``None`` (the record itself), or
    ``"explain"`` when an explanation extends the record of the model's own run (training or
    prediction), whose timings and threads must stay."""
    extends = isinstance(record, dict) and record.get("mode") != "explain"
    return "explain" if extends and isinstance(record.get("explain"), dict) else None


def store(adata, key: str, record: dict | None = None) -> dict[str, float]:
    """The current recording's timings into ``adata.uns[key]["timings"]`` (and ``record``;
    under ``["explain"]`` when :func:`own_part` says so)."""
    recorder = _current.get()
    if recorder is None:
        return {}
    timings = recorder.as_dict()
    part = own_part(record if record is not None else adata.uns.get(key))
    for target in (adata.uns.get(key), record):
        if isinstance(target, dict):
            target = target[part] if part else target
            target["timings"] = dict(timings)
    return timings
