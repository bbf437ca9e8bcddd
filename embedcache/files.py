"""Writing files so that nothing a user has is lost: atomic files, staged folders.

Two mechanisms, used by every step that writes:

* **Atomic files** (:func:`write_text`, :func:`write_json`, and
  :func:`atomic_file` for any writer): written under a temporary name in
  the same folder, then renamed over the target, so a file on disk is
  always whole. JSON is strict: NaN and infinities are
  written as ``null`` (any JSON reader can read it back), numpy scalars as
  Python numbers.
* **Staged folders** (:func:`partial_path`, :func:`swap_in`,
  :func:`staged_dir`): a folder is built as ``OUT.partial`` and swapped in
  when complete. An existing ``OUT`` is moved aside as ``OUT.replaced``
  and removed only once the new folder is in place, so at every moment
  either the old or the new folder is whole. A swap interrupted between
  its two renames is finished by the next one (:func:`recover`): the new
  folder moves in.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "report"
>>> with staged_dir(out) as tmp:
...     _ = (tmp / "a.txt").write_text("new")
>>> sorted(p.name for p in out.parent.iterdir()), (out / "a.txt").read_text()
(['report'], 'new')
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

PARTIAL = ".partial"
REPLACED = ".replaced"


def plain_json(obj):
    """NaN -> None, tuples -> lists, numpy scalars and arrays -> Python: what strict JSON can hold.

    >>> plain_json({"a": float("nan"), "b": (1, 2.5)})
    {'a': None, 'b': [1, 2.5]}
    """
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): plain_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain_json(obj.tolist())
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


@contextlib.contextmanager
def atomic_file(path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends without an error.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "weights.bin"
    >>> with atomic_file(target) as tmp:
    ...     _ = tmp.write_bytes(b"ok")
    >>> target.read_bytes()
    b'ok'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path, data, indent: int | None = 2) -> Path:
    """Strict JSON (NaN as null), written atomically (:func:`write_text`)."""
    return write_text(path, json.dumps(plain_json(data), indent=indent, allow_nan=False) + "\n")


def partial_path(out) -> Path:
    """Where ``out`` is built: ``OUT.partial`` beside it."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL)


def replaced_path(out) -> Path:
    """Where an old ``out`` waits while a new one is swapped in: ``OUT.replaced``."""
    out = Path(out)
    return out.with_name(out.name + REPLACED)


def remove(path) -> None:
    """Remove a file or folder if it is there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def recover(out, forward: bool = True) -> None:
    """Finish a swap that stopped between its renames (the process was killed there).

    The old ``out`` had been moved aside to ``OUT.replaced`` and the new
    one not yet moved in. A staged ``OUT.partial`` is then the complete new
    folder (:func:`swap_in` moves only complete folders, and every writer
    recovers before staging anew): with ``forward`` it is moved in and the
    old one removed. Otherwise the old ``out`` comes back. Either way
    ``out`` is whole.
    """
    out = Path(out)
    old = replaced_path(out)
    if not old.exists():
        return
    if not out.exists():
        newer = partial_path(out)
        try:
            (newer if forward and newer.exists() else old).rename(out)
        except FileNotFoundError:  # another process recovering it first moved it
            pass
    if out.exists() and old.exists():
        with contextlib.suppress(FileNotFoundError):
            remove(old)


def swap_in(staged, out) -> Path:
    """Move the complete ``staged`` folder (or file) to ``out``; an old ``out`` is removed only afterwards."""
    staged, out = Path(staged), Path(out)
    if staged == out:
        return out
    recover(out, forward=False)  # this swap brings the new folder
    old = replaced_path(out)
    if out.exists():
        out.rename(old)
    try:
        staged.rename(out)
    except BaseException:
        if old.exists() and not out.exists():
            old.rename(out)
        raise
    remove(old)
    return out


def fresh_partial(out) -> Path:
    """An empty ``OUT.partial`` (a stale one from an earlier attempt is removed; one a killed swap left
    complete is moved in first, :func:`recover`)."""
    recover(out)
    tmp = partial_path(out)
    remove(tmp)
    tmp.mkdir(parents=True)
    return tmp


@contextlib.contextmanager
def staged_dir(out) -> Iterator[Path]:
    """Build a folder in ``OUT.partial``; swap it in for ``out`` when the block ends without an error.

    On an error the partial folder is left for inspection (the next run
    starts it afresh) and ``out`` is untouched.
    """
    tmp = fresh_partial(out)
    yield tmp
    swap_in(tmp, out)


def check_writable(out, what: str = "--out") -> None:
    """Refuse an output folder that cannot be made, before any long work starts.

    ``out`` may exist (a folder: resumed or replaced later by its command)
    or not; the nearest folder that exists must be writable, and nothing
    on the way may be a regular file. URLs (object storage) are not
    checked here: their credentials are tried when the store opens.

    Raises
    ------
    OutputError
        One line naming the user's path and what is in the way.
    """
    from embedcache.errors import OutputError

    text = os.fspath(out)
    if "://" in text:
        return
    path = Path(text).absolute()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {text} is a file, not a folder; choose another path")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{what} {text}: {probe} is a file, not a folder; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {text}: cannot write in {probe} (permission denied or read-only); "
                          "choose a writable location")
