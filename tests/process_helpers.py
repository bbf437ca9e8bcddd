"""Several real processes running one command on one output, one of them killed with SIGKILL in some trials."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Together:
    """What the processes did: the survivors' pids and stdout, and the unit log's lines ``(pid, unit name)``."""

    pids: list[int]
    stdout: list[str]
    logged: list[tuple[int, str]]

    @property
    def units(self) -> Counter:
        """How many times each unit was written, by any process."""
        return Counter(name for _, name in self.logged)


def run_together(args: list[str], n: int, log: Path, kill: bool, after: int = 1) -> Together:
    """``python -m embedcache ARGS`` started ``n`` times at once; with ``kill``, one chosen at random gets
    SIGKILL once the unit log (``EMBEDCACHE_UNIT_LOG``) has ``after`` lines. Asserts every survivor exits 0."""
    env = {**os.environ, "EMBEDCACHE_UNIT_LOG": str(log), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "embedcache", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(n)]
    killed = None
    if kill:
        deadline = time.time() + 120
        while (not log.exists() or len(log.read_text().splitlines()) < after) and time.time() < deadline:
            time.sleep(0.005)
        killed = random.choice(procs)
        os.kill(killed.pid, signal.SIGKILL)
    said = {p.pid: p.communicate(timeout=300) for p in procs}
    survivors = [p for p in procs if p is not killed]
    assert all(p.returncode == 0 for p in survivors), [said[p.pid][1] for p in survivors]
    logged = [(int(pid), name) for pid, name in map(str.split, log.read_text().splitlines())] if log.exists() else []
    return Together([p.pid for p in survivors], [said[p.pid][0] for p in survivors], logged)


def leave_dead_claims(place, job: str, names: list[str]) -> None:
    """Claims on ``names`` left by a process that then died (it exits without releasing them)."""
    code = ("import os, sys; from embedcache.claims import Claims; c = Claims(sys.argv[1], sys.argv[2]); "
            "[c.acquire(n) for n in sys.argv[3:]]; os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(place), job, *names], check=True, timeout=60)
