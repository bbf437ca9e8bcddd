"""Progress of long work: a bar redrawn in place on a terminal, plain lines in a log.

tqdm redraws its bar with carriage returns many times a second; sent to a
file or a pipe (a batch job's log, ``2> run.log``) that is thousands of
fragments on one line. Where stderr is not a terminal, :func:`progress_bar`
writes one line per step instead, at most one every :data:`LINE_SECONDS`
(``EMBEDCACHE_PROGRESS_SECONDS``; 0 for every step), and the last one. Every
progress bar of the package is made here.
"""

from __future__ import annotations

import math
import os
import sys
import time

LINE_SECONDS = 10.0
"""Seconds between two lines in a log (the environment's ``EMBEDCACHE_PROGRESS_SECONDS`` overrides it)."""


def progress_bar(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 disable: bool = False, initial: int = 0, leave: bool = True, **tqdm_options):
    """A tqdm bar on a terminal (or in a notebook); :class:`LogLines` elsewhere.

    Takes tqdm's arguments; those that only shape a redrawn bar
    (``dynamic_ncols``...) are ignored in a log. Both kinds offer
    iteration, ``update``, ``set_postfix``, ``close`` and ``with``.
    """
    stream = tqdm_options.get("file") or sys.stderr
    if disable or _interactive(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, initial=initial, leave=leave,
                    **tqdm_options)
    return LogLines(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=stream)


def _interactive(stream) -> bool:
    if "ipykernel" in sys.modules:  # a notebook draws tqdm's widget
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("EMBEDCACHE_PROGRESS_SECONDS", LINE_SECONDS)))
    except ValueError:
        return LINE_SECONDS


class LogLines:
    """Progress as plain lines: ``DESC: N/TOTAL UNIT (P%), S s, R UNIT/s[, postfix]``.

    A line is written at a step when :data:`LINE_SECONDS` have passed since
    the last one (the first step always writes one) and when the work is
    done; ``leave=False`` (an epoch's bar) leaves out the closing line.
    """

    def __init__(self, iterable=None, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 leave: bool = True, file=None, seconds: float | None = None):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = int(initial)
        self.leave, self.file = leave, file or sys.stderr
        self.seconds = _seconds() if seconds is None else seconds
        self.start = time.monotonic()
        self.postfix = ""
        self._last = -math.inf
        self._written: int | None = None
        self.closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        done = self.total is not None and self.n >= self.total
        if now - self._last >= self.seconds or (done and self.leave):
            self._line(now)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.leave and self._written != self.n:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        elapsed = now - self.start
        of = f"/{self.total}" if self.total is not None else ""
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {(self.n - self.initial) / elapsed:.3g} {self.unit}/s" if elapsed > 0 else ""
        extra = f", {self.postfix}" if self.postfix else ""
        name = f"{self.desc}: " if self.desc else ""
        print(f"{name}{self.n}{of} {self.unit}{share}, {elapsed:.0f} s{rate}{extra}", file=self.file, flush=True)
        self._last, self._written = now, self.n
