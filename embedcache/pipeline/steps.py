"""Steps keyed by the content of their inputs: done once, reused after.

A step's key is the SHA-256 of canonical JSON of everything that decides
its output: the keys of the steps it reads, its settings, and for data the
dataset fingerprint. Its output lives in ``OUT/steps/<kind>-<key[:16]>/``
and is complete when ``step.json`` is there: that record is written last,
under a temporary name and renamed. A directory without it is a step that
stopped halfway; running it again resumes (extraction and training pick up
their own partial work) or redoes it. Nothing is ever deleted: another
setting is another key, another directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

STEP_RECORD = "step.json"


def content_key(obj) -> str:
    """SHA-256 of ``obj`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def write_json_atomic(path: Path, data) -> Path:
    """Write JSON to a temporary name in the same folder, then rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


@dataclass
class Step:
    """One unit of a pipeline.

    Attributes
    ----------
    kind : str
        ``data``, ``extract``, ``probe``, ``fit``, ``evaluate``.
    label : str
        What it is, for people: ``fit lite0 on demo (seed 0)``.
    inputs : dict
        Everything its key hashes.
    action : callable
        ``action(directory) -> dict``: does the work in ``directory`` and
        returns what to record (sizes, times, summary scores).
    deps : list of Step
    group : str
        The encoder (or dataset) whose failure skips this step.
    """

    kind: str
    label: str
    inputs: dict
    action: Callable[[Path], dict]
    root: Path
    deps: list["Step"] = field(default_factory=list)
    group: str = ""

    @cached_property
    def key(self) -> str:
        """Hash of the kind and inputs (fixed once the step is made: ``dir``, ``done`` and reports read it often)."""
        return content_key({"kind": self.kind, **self.inputs})

    @property
    def dir(self) -> Path:
        return self.root / "steps" / f"{self.kind}-{self.key[:16]}"

    @property
    def done(self) -> bool:
        return (self.dir / STEP_RECORD).is_file()

    def state(self) -> str:
        """``reuse`` (finished before), ``resume`` (started, not finished) or ``run``."""
        if self.done:
            return "reuse"
        return "resume" if self.dir.exists() else "run"

    def record(self) -> dict:
        """What the finished step recorded (its ``step.json``)."""
        return json.loads((self.dir / STEP_RECORD).read_text())

    def run(self) -> dict:
        """Do the step (unless done) and record it; returns the record."""
        if self.done:
            return self.record()
        self.dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        result = self.action(self.dir)
        rec = {"kind": self.kind, "label": self.label, "key": self.key, "inputs": self.inputs,
               "result": result, "seconds": time.perf_counter() - t0,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json_atomic(self.dir / STEP_RECORD, rec)
        return rec
