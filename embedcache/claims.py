"""Claims on units of work, so that several processes share one job and none computes a unit twice.

A job (an extraction into one ``--out``) keeps its claims in a folder
beside its output, ``OUT.claims`` (:func:`claims_place`): one small JSON
file per claimed unit, ``<name>.claim``, holding who owns it::

    {"store": <id of the job>, "owner": <random token of the process>,
     "pid": 4242, "host": "node17", "boot": <Linux boot id>, "start": <process start, clock ticks>,
     "beat": 7, "name": "unit-00012"}

A process claims a unit before computing it (:meth:`Claims.acquire`) and
releases it once the unit is written and marked done
(:meth:`Claims.release`); it skips units that are done or held by a live
process, and takes over claims whose owner is gone.

How a claim is made, by backend
-------------------------------
* **Local disk** (and network filesystems mounted as folders): the claim
  is written whole to a private temporary file, then hard-linked to its
  name; ``link`` fails when the name exists, atomically, so of two
  processes exactly one gets the claim, and a reader never sees a
  half-written claim. This holds on local filesystems and on NFS
  (``link`` is the classic NFS-safe lock). Taking over a stale claim
  renames it to a private name (one rename of a given file succeeds),
  checks that what was renamed is the very claim judged stale (else puts
  it back), and then claims afresh with ``link``: of two takers at most
  one wins.
* **S3** (``s3://``, and S3-compatible servers that implement conditional
  writes, as AWS has since 2024 and moto emulates): a claim is a
  ``PutObject`` with ``If-None-Match: *``, which the server refuses with
  412 when the key exists; a take-over, a heartbeat and a release are
  conditional on the ETag last seen (``If-Match``), so of two takers the
  server lets exactly one through and an owner never rewrites or deletes
  a claim that was taken from it. A server that ignores these headers
  (some S3 look-alikes) gives no such guarantee.
* **Other fsspec filesystems** (``gs://``, ``az://``, ...): a claim is
  written only after checking the name is free, and read back; two
  processes starting within the same instant may both claim a unit. Units
  are idempotent (a unit rewrites whole shards with the same bytes), so
  the store is still right: the cost is a unit computed twice, not damage.

When a claim is stale
---------------------
* **Same host** (same host name and Linux boot id): the owner is alive
  when its pid runs *and* that process started at the recorded time
  (``/proc/<pid>/stat``), so a pid the kernel gave to another process
  since does not keep a dead owner's claim. Judged at once.
* **Another host**: the owner rewrites its claims every
  ``heartbeat_s`` seconds (10 by default) with a new ``beat`` counter. A
  reader judges the claim stale when the *content* has not changed for
  ``stale_s`` seconds (60 by default) measured by the reader's own
  monotonic clock since it first saw that content. No timestamps written
  by one host are compared with another host's clock, so a host whose
  clock is hours off neither keeps nor loses claims because of it. A
  claim from another host is therefore taken over no sooner than
  ``stale_s`` after this process first saw it.
* A claim that is not valid JSON (a damaged file: claims are never seen
  half-written) is stale. A claim for another job (``store`` differs) is
  reported by :meth:`Claims.foreign` so the caller can refuse to touch
  an output another configuration is being built into.

>>> import tempfile, pathlib
>>> place = pathlib.Path(tempfile.mkdtemp()) / "out.zarr.claims"
>>> a, b = Claims(place, "job-1"), Claims(place, "job-1")
>>> a.acquire("unit-0"), b.acquire("unit-0")
(True, False)
>>> a.release("unit-0"); b.acquire("unit-0")
True
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SUFFIX = ".claim"
CLAIMS = ".claims"
HEARTBEAT_S = 10.0
STALE_S = 60.0


def claims_place(out) -> str | Path:
    """Where the claims of a job writing ``out`` live: ``OUT.claims`` beside it (a path, or a URL)."""
    text = os.fspath(out) if isinstance(out, os.PathLike) else str(out)
    if "://" in text and not text.startswith(("file://", "local://")):
        return text.rstrip("/") + CLAIMS
    if "://" in text:
        text = text.split("://", 1)[1]
    path = Path(text).expanduser()
    return path.with_name(path.name + CLAIMS)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> int | None:
    """The start of process ``pid`` in clock ticks after boot (Linux); None when it does not run."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    except OSError:
        return _kill0(pid)
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _kill0(pid: int) -> int | None:
    """Without /proc: 0 when a process ``pid`` exists (start time unknown), None when not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return 0
    return 0


@dataclass(frozen=True)
class ClaimState:
    """One claim as a reader judges it now.

    ``state`` is ``"mine"``, ``"live"``, ``"stale"`` or ``"corrupt"``;
    ``record`` the claim's JSON (empty when corrupt).
    """

    name: str
    state: str
    record: dict

    def describe(self) -> str:
        """One line: the unit, its owner and whether it is alive."""
        r = self.record
        if self.state == "corrupt":
            return f"{self.name}: unreadable claim file (taken over when the unit is next claimed)"
        where = f"pid {r.get('pid')} on {r.get('host')}"
        return f"{self.name}: {self.state} claim by {where}"


class _LocalFolder:
    """Claim files in a local folder; ``tag`` of a claim is its bytes."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __str__(self):
        return str(self.path)

    def _tmp(self) -> Path:
        return self.path / f".{uuid.uuid4().hex}.tmp"

    def create(self, name: str, data: bytes) -> bytes | None:
        tmp = self._tmp()
        while True:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(data)
                break
            except FileNotFoundError:  # the folder was removed as empty by a process finishing: make it again
                continue
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                from embedcache.errors import OutputError

                raise OutputError(f"cannot write claims in {self.path} ({exc.strerror}): every process "
                                  "writing an output keeps its claims beside it; make that folder writable or "
                                  "choose another output") from None
        try:
            os.link(tmp, self.path / name)
        except FileExistsError:
            return None
        finally:
            tmp.unlink()
        return data

    def read(self, name: str) -> tuple[bytes, bytes] | None:
        try:
            data = (self.path / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return data, data

    def take_over(self, name: str, data: bytes, tag: bytes) -> bytes | None:
        aside = self._tmp()
        try:
            os.rename(self.path / name, aside)
        except FileNotFoundError:
            return None  # another taker moved it first
        try:
            if aside.read_bytes() != tag:  # not the claim judged stale: another's fresh one, put back
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path / name)
                return None
        finally:
            aside.unlink()
        return self.create(name, data)

    def rewrite(self, name: str, data: bytes, tag: bytes) -> bytes | None:
        # Only a taker that judged this owner dead could change the file between the check and the
        # replace; the owner rewrites it to show it is alive, so that taker has read a live claim.
        current = self.read(name)
        if current is None or current[1] != tag:
            return None
        tmp = self._tmp()
        tmp.write_bytes(data)
        os.replace(tmp, self.path / name)
        return data

    def delete(self, name: str, tag: bytes) -> None:
        current = self.read(name)
        if current is not None and current[1] == tag:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()

    def names(self) -> list[str]:
        try:
            return sorted(p.name for p in self.path.iterdir() if p.name.endswith(SUFFIX))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def remove_if_empty(self) -> None:
        for tmp in self.path.glob(".*.tmp") if self.path.is_dir() else ():
            if time.time() - tmp.stat().st_mtime > STALE_S:  # left by a process killed mid-write
                tmp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.rmdir()


def _precondition_failed(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, FileExistsError) or "PreconditionFailed" in text or "pre-condition" in text


class _ObjectFolder:
    """Claim objects under a prefix of an fsspec filesystem; on S3, ``tag`` of a claim is its ETag."""

    def __init__(self, url: str):
        import fsspec

        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.s3 = type(self.fs).__name__ == "S3FileSystem"

    def __str__(self):
        return self.url

    def _key(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _s3(self, method: str, name: str, **kwargs):
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(self._key(name))

        async def call():
            out = await self.fs._call_s3(method, Bucket=bucket, Key=key, **kwargs)
            if "Body" in out and hasattr(out["Body"], "read"):
                out = {**out, "Body": await out["Body"].read()}
            return out

        return sync(self.fs.loop, call)

    def create(self, name: str, data: bytes):
        if self.s3:
            try:
                return self._s3("put_object", name, Body=data, IfNoneMatch="*")["ETag"]
            except Exception as exc:
                if _precondition_failed(exc):
                    return None
                raise
        if self.fs.exists(self._key(name)):
            return None
        self.fs.pipe_file(self._key(name), data)
        got = self.read(name)
        return got[1] if got is not None and got[0] == data else None

    def read(self, name: str):
        try:
            if self.s3:
                out = self._s3("get_object", name)
                return out["Body"], out["ETag"]
            data = self.fs.cat_file(self._key(name))
        except FileNotFoundError:
            return None
        return data, data

    def _conditional_put(self, name: str, data: bytes, tag):
        try:
            return self._s3("put_object", name, Body=data, IfMatch=tag)["ETag"]
        except Exception as exc:
            if _precondition_failed(exc) or isinstance(exc, FileNotFoundError):
                return None
            raise

    def take_over(self, name: str, data: bytes, tag):
        if self.s3:
            return self._conditional_put(name, data, tag)
        current = self.read(name)
        if current is None or current[1] != tag:
            return None
        self.fs.pipe_file(self._key(name), data)
        return data

    def rewrite(self, name: str, data: bytes, tag):
        return self.take_over(name, data, tag)

    def delete(self, name: str, tag) -> None:
        if self.s3:
            with contextlib.suppress(FileNotFoundError):
                try:
                    self._s3("delete_object", name, IfMatch=tag)
                except Exception as exc:
                    if not _precondition_failed(exc):
                        raise
            return
        current = self.read(name)
        if current is not None and current[1] == tag:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self._key(name))

    def names(self) -> list[str]:
        self.fs.invalidate_cache(self.root)
        try:
            return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)
                          if p.endswith(SUFFIX))
        except FileNotFoundError:
            return []

    def remove_if_empty(self) -> None:
        """Nothing to do: a prefix with no objects is no folder."""


class Claims:
    """The claims of one job, held and judged by this process.

    Parameters
    ----------
    where : str or Path
        The claims folder (:func:`claims_place`): a local folder or an fsspec URL.
    store_id : str
        What identifies the job (e.g. a digest of the store's configuration):
        claims carrying another id belong to another job.
    heartbeat_s, stale_s : float
        Seconds between rewrites of this process's claims, and how long a
        claim from another host may stay unchanged before it is stale.

    Use as a context manager to rewrite held claims every ``heartbeat_s``
    in a background thread, and on leaving release them all and remove the
    claims folder if no claim is left in it.
    """

    def __init__(self, where, store_id: str, *, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):
        text = os.fspath(where) if isinstance(where, os.PathLike) else str(where)
        self.folder = _ObjectFolder(text) if "://" in text else _LocalFolder(Path(text))
        self.store_id = store_id
        self.heartbeat_s, self.stale_s = float(heartbeat_s), float(stale_s)
        self.me = {"store": store_id, "owner": uuid.uuid4().hex, "pid": os.getpid(), "host": socket.gethostname(),
                   "boot": _boot_id(), "start": _start_time(os.getpid())}
        self._held: dict[str, tuple[int, object]] = {}  # name -> (beat, tag of what was last written)
        self.taken: dict[str, int] = {}  # claims taken over: "stale" (owner dead), "corrupt" (unreadable file)
        self._lost: set[str] = set()
        self._seen: dict[str, tuple[bytes, float]] = {}  # name -> (content, reader's monotonic time first seen)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __str__(self):
        return str(self.folder)

    # -- holding ---------------------------------------------------------------------------------

    def _payload(self, name: str, beat: int) -> bytes:
        return json.dumps({**self.me, "beat": beat, "name": name}).encode()

    def acquire(self, name: str) -> bool:
        """Claim ``name``: True when this process holds it now, False when a live process (or another job) does.

        A stale or corrupt claim is taken over.
        """
        fname = name + SUFFIX
        with self._lock:
            if name in self._held:
                return True
            tag = self.folder.create(fname, self._payload(name, 0))
            if tag is None:
                current = self.folder.read(fname)
                if current is None:  # released meanwhile: try once more
                    tag = self.folder.create(fname, self._payload(name, 0))
                else:
                    state = self.judge(name, current[0]).state
                    if state in ("stale", "corrupt"):
                        tag = self.folder.take_over(fname, self._payload(name, 0), current[1])
                        if tag is not None:
                            self.taken[state] = self.taken.get(state, 0) + 1
            if tag is None:
                return False
            self._held[name] = (0, tag)
            self._lost.discard(name)
            self._seen.pop(name, None)
            return True

    def acquire_waiting(self, name: str, poll_s: float = 0.2) -> None:
        """Claim ``name``, waiting while a live process holds it."""
        while not self.acquire(name):
            time.sleep(poll_s)

    def release(self, name: str) -> None:
        """Give up ``name`` (deleting its claim only if it is still this process's)."""
        with self._lock:
            held = self._held.pop(name, None)
            if held is not None:
                self.folder.delete(name + SUFFIX, held[1])

    def release_all(self) -> None:
        for name in list(self._held):
            self.release(name)

    def holds(self, name: str) -> bool:
        """Whether this process still holds ``name`` (False once another took it over)."""
        with self._lock:
            return name in self._held and name not in self._lost

    def beat(self) -> None:
        """Rewrite every held claim with the next heartbeat; a claim found taken over is dropped."""
        with self._lock:
            for name, (n, tag) in list(self._held.items()):
                new = self.folder.rewrite(name + SUFFIX, self._payload(name, n + 1), tag)
                if new is None:
                    self._lost.add(name)
                    del self._held[name]
                else:
                    self._held[name] = (n + 1, new)

    def __enter__(self) -> "Claims":
        def loop():
            while not self._stop.wait(self.heartbeat_s):
                with contextlib.suppress(Exception):  # a missed beat only makes claims look older
                    self.beat()

        self._stop.clear()
        self._thread = threading.Thread(target=loop, name="embedcache-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.release_all()
        # Nothing of ours is left: no empty folder either. Best effort: a read-only folder, or storage that
        # cannot be reached (no credentials), must not hide the error that ended the block.
        with contextlib.suppress(Exception):
            self.remove_if_empty()

    # -- judging ---------------------------------------------------------------------------------

    def judge(self, name: str, data: bytes) -> ClaimState:
        """Whether the claim ``data`` of ``name`` is this process's, alive, stale, or corrupt (see the module)."""
        try:
            record = json.loads(data)
            if not isinstance(record, dict) or not {"owner", "pid", "host", "store"} <= set(record):
                raise ValueError
        except ValueError:
            return ClaimState(name, "corrupt", {})
        if record["owner"] == self.me["owner"]:
            return ClaimState(name, "mine", record)
        if record["host"] == self.me["host"] and record.get("boot", "") == self.me["boot"]:
            started = _start_time(int(record["pid"]))
            alive = started is not None and (not started or record.get("start") in (None, started))
            return ClaimState(name, "live" if alive else "stale", record)
        if record["host"] == self.me["host"]:
            return ClaimState(name, "stale", record)  # the host rebooted since
        now = time.monotonic()
        seen = self._seen.get(name)
        if seen is None or seen[0] != data:
            self._seen[name] = (data, now)
            return ClaimState(name, "live", record)
        return ClaimState(name, "stale" if now - seen[1] > self.stale_s else "live", record)

    def state(self, name: str) -> ClaimState | None:
        """The claim on ``name`` as judged now; None when nobody claims it."""
        current = self.folder.read(name + SUFFIX)
        return None if current is None else self.judge(name, current[0])

    def all(self) -> list[ClaimState]:
        """Every claim of the folder, judged now (``verify`` and ``info`` show them)."""
        out = []
        for fname in self.folder.names():
            state = self.state(fname[: -len(SUFFIX)])
            if state is not None:
                out.append(state)
        return out

    def foreign(self) -> ClaimState | None:
        """A live claim of another job in this folder, if any (its owner builds another store at this place)."""
        for c in self.all():
            if c.state == "live" and c.record.get("store") != self.store_id:
                return c
        return None

    def clear_stale(self) -> None:
        """Delete the claims of dead processes (a unit they finished but had not released yet)."""
        for c in self.all():
            if c.state in ("stale", "corrupt"):
                current = self.folder.read(c.name + SUFFIX)
                if current is not None and self.judge(c.name, current[0]).state in ("stale", "corrupt"):
                    self.folder.delete(c.name + SUFFIX, current[1])

    def job_done(self) -> None:
        """The job is complete (here or by another process): delete the claims dead processes left on it,
        which nobody will take over now, then the folder once it is empty."""
        self.clear_stale()
        self.remove_if_empty()

    def remove_if_empty(self) -> None:
        """Remove the claims folder once no claim is left in it (locally; a prefix vanishes by itself)."""
        if not self.folder.names():
            self.folder.remove_if_empty()


def claims_of(out) -> list[ClaimState]:
    """The claims on the output ``out`` (or its ``OUT.partial``), each judged now: what ``info`` and ``verify`` show.

    A claim of another host is reported live the first time it is seen: its
    heartbeat can only be judged over ``stale_s`` of watching.
    """
    text = os.fspath(out) if isinstance(out, os.PathLike) else str(out)
    text = text.rstrip("/")
    if text.endswith(".partial"):
        text = text[: -len(".partial")]
    return Claims(claims_place(text), "").all()


def describe_claims(states: list[ClaimState]) -> list[str]:
    """One line per claim, live ones first."""
    order = {"live": 0, "stale": 1, "corrupt": 2}
    return [s.describe() for s in sorted(states, key=lambda s: (order.get(s.state, 3), s.name))]
