"""Sharing one job among processes through claims: which units to compute, waiting for others, finishing once.

Every output that several processes may build at once (an extraction, a
cell store, a slide's regions) goes the same way
(:func:`work_through`): opened by one process at a time
(:func:`open_alone`), then passes over its units (:class:`SharedUnits`):
each not done is claimed, checked again, computed, marked done and
released; units held by live processes wait for a later pass; when none is
left, one process finishes the output under the claim ``store`` and the
others find it finished. :func:`sole` holds an output for one process
alone (a decoder run). The claims themselves: :mod:`embedcache.claims`.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from embedcache.claims import Claims, ClaimState, claims_place

# An audit of who computed what: when set, each process appends "<pid> <unit's claim name>" to this file for
# every unit it writes (extraction, cell stores, slide prediction alike).
UNIT_LOG = "EMBEDCACHE_UNIT_LOG"
# The claim of a process driving a dask extraction: it holds the whole output (its workers write the units).
DASK_DRIVER = "dask-driver"


class SharedUnits:
    """The units of one job as this process works through them beside others, and the tally of what it did.

    Iterating gives one pass: each unit not done and claimed by this
    process, in order (the caller computes it, then calls
    :meth:`finished`); units done are counted, units held by live
    processes are kept in :attr:`pending` for a later pass. :meth:`wait`
    blocks until one of those may be claimed (its owner released it
    unfinished, or died) or all are done.

    Parameters
    ----------
    claims : Claims
    units : iterable of int
        The units this process may compute (those not done when it started).
    is_done : callable
        ``is_done(unit) -> bool``, read afresh from the output each time.
    name : callable
        ``name(unit) -> str``, the unit's claim name.
    """

    def __init__(self, claims: Claims, units, is_done, name=lambda u: f"unit-{u:06d}"):
        self.claims, self.is_done, self.name = claims, is_done, name
        self.pending = [int(u) for u in units]
        self.computed: list[int] = []
        self.by_others = 0  # held by another process when first looked at, and finished by one
        self._looked: set[int] = set()

    def _count_done(self, unit: int) -> None:
        if unit in self._looked:
            self.by_others += 1

    def __iter__(self):
        busy = []
        for k, unit in enumerate(self.pending):
            if self.is_done(unit):
                self._count_done(unit)
                continue
            if not self.claims.acquire(self.name(unit)):
                self._looked.add(unit)
                busy.append(unit)
                continue
            if self.is_done(unit):  # finished by its owner between the two looks
                self.claims.release(self.name(unit))
                self._count_done(unit)
                continue
            self._looked.add(unit)
            yield unit
        self.pending = busy

    def finished(self, unit: int) -> None:
        """``unit`` is written and marked done by this process: its claim goes (and the unit log gets a line)."""
        self.computed.append(int(unit))
        self.claims.release(self.name(unit))
        audit(self.name(unit))

    def wait(self, poll_s: float = 0.5, stop=lambda: False) -> bool:
        """Block until a pending unit may be claimed (True) or none is left to wait for (False).

        ``stop()`` True ends the wait early (the output was finished by another process).
        """
        while self.pending:
            if stop():
                return False
            time.sleep(poll_s)
            left = []
            for unit in self.pending:
                if self.is_done(unit):
                    self._count_done(unit)
                    continue
                left.append(unit)
                state = self.claims.state(self.name(unit))
                if state is None or state.state in ("stale", "corrupt"):
                    self.pending = left + self.pending[self.pending.index(unit) + 1:]
                    return True
            self.pending = left
        return False

    def summary(self, total: int) -> str:
        """One line: how many of ``total`` units this process computed, found done and left to others."""
        others = self.by_others + len(self.pending)
        found = total - len(self.computed) - others  # those done before it started count as found done too
        taken = self.claims.taken
        notes = "".join(f"; took over {n} {what}" for what, n in (
            ("claims left by dead processes", taken.get("stale", 0)),
            ("unreadable (damaged) claim files", taken.get("corrupt", 0))) if n)
        return (f"this process computed {len(self.computed)} of {total} units, found {found} done, "
                f"{others} claimed by other processes{notes}")



def audit(name: str) -> None:
    """Append ``<pid> <name>`` to the unit log (:data:`UNIT_LOG`) when it is set: one short write with
    O_APPEND, whole even when processes share the file."""
    if not os.environ.get(UNIT_LOG):
        return
    fd = os.open(os.environ[UNIT_LOG], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {name}\n".encode())
    finally:
        os.close(fd)


@contextlib.contextmanager
def held(claims: Claims, name: str, poll_s: float = 0.05):
    """Hold the claim ``name`` for the block, waiting while a live process holds it: a lock among processes
    (a dead holder's is taken over, see :mod:`embedcache.claims`)."""
    claims.acquire_waiting(name, poll_s=poll_s)
    try:
        yield
    finally:
        claims.release(name)


class FinishedElsewhere(Exception):
    """The output this process writes into was finished (swapped in) by another process meanwhile."""


def done_reader(done, building: Path | None = None):
    """``is_done(unit)`` read afresh from a ``done`` marker array (one element a unit).

    With ``building`` (a local ``OUT.partial``), raises
    :class:`FinishedElsewhere` once it was swapped in: the markers of a
    folder renamed away read as "not done", so the folder is checked
    *after* each read.
    """

    def is_done(unit: int) -> bool:
        value = bool(done[unit])
        if building is not None and not Path(building).exists():
            raise FinishedElsewhere
        return value

    return is_done


def open_alone(claims: Claims, what: str, open_output, name: str = "store"):
    """``open_output(joined)`` run by one process at a time (under the claim ``name``); returns what it returns.

    ``joined`` is True when live processes of this job hold claims (the
    caller then resumes their output rather than starting it again with
    ``--overwrite``). A live process of another job at the same place
    is refused.

    Raises
    ------
    ClaimedError
        Another job (other settings) is being written at this place.
    """
    from embedcache.errors import ClaimedError

    claims.acquire_waiting(name)
    try:
        foreign = claims.foreign()
        if foreign is not None:
            how = ("on a dask cluster" if foreign.record.get("store") == DASK_DRIVER else "with other settings")
            raise ClaimedError(f"{what} is being built by another process {how} "
                               f"({foreign.describe()}); wait for it to finish, or choose another output")
        return open_output(any(c.state == "live" for c in claims.all()))
    finally:
        claims.release(name)


def work_through(claims: Claims, units: SharedUnits, run_pass, finished, finish, wait: bool = True,
                 name: str = "store") -> str | None:
    """Passes over ``units`` until none is left for this process, then the output finished once.

    Parameters
    ----------
    run_pass : callable
        ``run_pass()`` computes the units of one iteration of ``units``.
    finished : callable
        ``finished() -> bool``: whether another process has finished the output.
    finish : callable
        ``finish()`` finishes the output; called under the claim ``name``
        by one process, once every unit is done.
    wait : bool
        Wait for units held by other live processes (False: return when
        only those are left).

    Returns
    -------
    str or None
        ``"this"`` (this process finished the output), ``"another"``, or
        None (units are left to other processes).
    """
    try:
        while True:
            run_pass()
            if not units.pending or not wait or not units.wait(stop=finished):
                break
        if units.pending and not finished():
            return None
        claims.acquire_waiting(name)
        try:
            if finished():
                return "another"
            finish()
            return "this"
        finally:
            claims.release(name)
            # A process killed between marking a unit done and releasing it left its claim: nobody needs it now.
            claims.job_done()
    except FinishedElsewhere:
        return "another"


@contextlib.contextmanager
def sole(out, job: str, what: str = "--out", alone: bool = False):
    """Hold the one claim on ``out`` for the block: a second process writing ``out`` is refused while this lives.

    A claim left by a dead process is taken over (the block then resumes
    its work); the claims folder goes once the block ends. With ``alone``,
    live claims of any other job on ``out`` (processes sharing its units)
    are refused too.

    Raises
    ------
    ClaimedError
        A live process holds ``out``: one line naming it.
    """
    from embedcache.errors import ClaimedError

    with Claims(claims_place(out), job) as claims:
        holder = None if claims.acquire(job) else claims.state(job) or "another process"
        if holder is None and alone:
            holder = next((c for c in claims.all() if c.state == "live" and c.name != job), None)
            if holder is None:
                claims.clear_stale()  # claims of dead processes sharing out: their units are in the store or not
        if holder is not None:
            claims.release(job)
            who = (f"pid {holder.record.get('pid')} on {holder.record.get('host')}" if isinstance(holder, ClaimState)
                   else holder)
            raise ClaimedError(f"{what} {out} is being written by {who} now; wait for it to finish "
                               f"(a dead one's work is resumed by running again), or choose another {what}")
        try:
            yield claims
        finally:
            claims.release(job)
            claims.remove_if_empty()
