"""How many threads a command may use: one budget, shared by torch, BLAS and the processes it starts.

The budget is ``embedcache --threads N`` (or a pipeline file's
``threads:``, or the ``EMBEDCACHE_THREADS`` environment variable), else
the cores this process may run on (its CPU affinity, so a container or
``taskset`` limit counts). Every place that starts work sizes it from the
budget, so the sum fits:

* the main process's torch threads are the budget less the processes
  working beside it (DataLoader workers, post-processing workers):
  :func:`compute_threads`;
* a local dask cluster's workers share it (:func:`per_worker`);
* BLAS (scikit-learn's probes, numpy) and OpenMP in child processes get it
  through the environment (``OMP_NUM_THREADS`` and kin), which child
  processes read at start.

OpenMP threads that find no core spin before they sleep, which turns one
competing job into a many-fold slowdown; :func:`set_budget` sets
``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy, so waiting
threads yield their core (it must be set before torch loads, which is
why the CLI calls it first).
"""

from __future__ import annotations

import contextlib
import os

from embedcache.errors import ConfigError

ENV = "EMBEDCACHE_THREADS"
# Thread pools children read from the environment at start (OpenMP, OpenBLAS, MKL, Accelerate, numexpr).
POOL_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
             "NUMEXPR_NUM_THREADS")
_OURS: set[str] = set()  # the pool variables set here (not by the user), updated when the budget changes


def available_cores() -> int:
    """Cores this process may run on (its affinity where the system tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def budget() -> int:
    """The threads a command may use: ``EMBEDCACHE_THREADS`` when set, else :func:`available_cores`.

    Raises
    ------
    ConfigError
        ``EMBEDCACHE_THREADS`` is not a whole number of at least 1.
    """
    value = os.environ.get(ENV, "").strip()
    if not value:
        return available_cores()
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{ENV}={value!r}: give a whole number of threads, at least 1")
    return int(value)


def set_budget(n: int | None) -> int:
    """Make ``n`` threads (None: the cores) this process's and its children's budget; returns it.

    Sets ``EMBEDCACHE_THREADS`` and the thread-pool variables children read
    (a pool variable the user set stays), ``OMP_WAIT_POLICY=PASSIVE`` unless
    set, and torch's and BLAS's threads here when they are loaded.
    """
    if n is not None and n < 1:
        raise ConfigError(f"--threads must be at least 1, got {n}")
    if n is not None:
        os.environ[ENV] = str(int(n))
    n = budget()
    for var in POOL_VARS:
        if var not in os.environ or var in _OURS:  # the user's own setting stays
            os.environ[var] = str(n)
            _OURS.add(var)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    if "numpy" in sys.modules:  # BLAS pools already started here
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)
    return n


def compute_threads(beside: int = 0) -> int:
    """Threads for this process's compute when ``beside`` processes work next to it (at least 1)."""
    return max(1, budget() - max(0, beside))


@contextlib.contextmanager
def use_threads(beside: int = 0):
    """Torch's threads here set to :func:`compute_threads` inside the block (yielded), as they were after."""
    import torch

    before = torch.get_num_threads()
    n = compute_threads(beside)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def per_worker(n_workers: int) -> int:
    """Threads for each of ``n_workers`` processes sharing the budget (at least 1)."""
    return max(1, budget() // max(1, n_workers))
