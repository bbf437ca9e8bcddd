"""A unit's objects encoded and read directly: Zarr v3 chunks and shards without zarr's per-chunk pipeline.

Zarr writes and reads a sharded array one inner chunk at a time through
its codec pipeline: an indexer, buffer objects, an event-loop task and a
thread hop per chunk and codec, about a millisecond of Python each, while
LZ4 itself moves a chunk of tokens in tens of microseconds. A store's
objects are one unit of work deep (:func:`~embedcache.store.schema.array_specs`),
so this module encodes a unit's whole shard (or chunk) of an array in one
call, with the codecs its metadata names, and reads chosen chunks by their
byte ranges from the shard index.

What it writes is what zarr writes, byte for byte (the tests compare every
object with zarr's): the codecs of the zarr v3 specification applied in
order (``bytes`` little endian, then ``blosc``, ``zstd`` and ``crc32c``
with numcodecs and google-crc32c, as zarr does), inner chunks laid out in
Morton order, and the shard index (offset and length of each inner chunk,
``2**64 - 1`` for an absent one) with its own codecs, at the shard's end
or start. Any store remains a plain zarr store; an array whose codecs or
chunking this module does not know (:meth:`UnitArray.of` returns None) is
left to zarr.

References: the zarr v3 core specification (chunk key encoding, ``bytes``
and ``crc32c``), the ``sharding_indexed`` codec specification (ZEP 2),
and zarr-python 3.1 ``zarr/codecs/sharding.py`` (Morton order of
``morton_order_iter``, empty entries of ``_ShardIndex``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MISSING = np.uint64(2**64 - 1)  # offset and length of an inner chunk the shard does not hold


class ChunkError(ValueError):
    """A chunk whose bytes do not decode (a failed checksum, a truncated object)."""


class ChunkCodec:
    """The codecs of one chunk, from an array's metadata: ``bytes``, then any of ``blosc``, ``zstd``, ``crc32c``.

    Use :meth:`parse`, which returns None for codecs it does not know.
    """

    def __init__(self, dtype: np.dtype, steps: list[tuple[str, object]]):
        self.dtype = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)
        self.steps = steps

    @classmethod
    def parse(cls, codecs: list[dict], dtype) -> "ChunkCodec | None":
        """The chunk codecs of zarr metadata (``codecs`` entries as JSON); None when any is unknown."""
        if not codecs or codecs[0].get("name") != "bytes":
            return None
        endian = (codecs[0].get("configuration") or {}).get("endian")
        if np.dtype(dtype).itemsize > 1 and endian != "little":
            return None
        steps: list[tuple[str, object]] = []
        for codec in codecs[1:]:
            name, conf = codec.get("name"), codec.get("configuration") or {}
            if name == "crc32c":
                steps.append((name, None))
            elif name == "blosc":
                steps.append((name, _blosc(conf)))
            elif name == "zstd":
                from numcodecs import Zstd

                steps.append((name, Zstd.from_config({"level": conf.get("level", 0),
                                                      "checksum": conf.get("checksum", False)})))
            else:
                return None
        return cls(dtype, steps)

    def encode(self, values: np.ndarray) -> bytes:
        """The stored bytes of one chunk of ``values`` (any shape; C order)."""
        data = np.ascontiguousarray(values, dtype=self.dtype).reshape(-1).view(np.uint8)
        for name, codec in self.steps:
            if name == "crc32c":
                data = bytes(data) + struct.pack("<I", _crc32c(np.frombuffer(data, dtype=np.uint8)))
            else:
                data = codec.encode(data)
        return bytes(data)

    def decode(self, data, out: np.ndarray) -> None:
        """Decode one chunk's bytes into ``out`` (C-contiguous, the chunk's shape and dtype).

        Raises
        ------
        ChunkError
            A checksum that does not match, or bytes that do not decode to ``out``'s size.
        """
        data = np.frombuffer(data, dtype=np.uint8)
        target = out.reshape(-1).view(np.uint8)
        for k in range(len(self.steps) - 1, -1, -1):
            name, codec = self.steps[k]
            if name == "crc32c":
                if len(data) < 4 or int(data[-4:].view("<u4")[0]) != _crc32c(data[:-4]):
                    raise ChunkError("stored and computed checksum do not match")
                data = data[:-4]
            elif k == 0:  # the last step decompresses straight into the output
                try:
                    codec.decode(data, out=target)
                except Exception as exc:
                    raise ChunkError(f"cannot decompress ({type(exc).__name__}: {exc})") from None
                return
            else:
                data = np.frombuffer(codec.decode(data), dtype=np.uint8)
        if len(data) != target.size:
            raise ChunkError(f"{len(data)} bytes for a chunk of {target.size}")
        target[:] = data


def _blosc(conf: dict):
    import numcodecs
    from numcodecs import Blosc

    shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
    config = {"cname": conf["cname"], "clevel": conf["clevel"], "shuffle": shuffle[conf["shuffle"]],
              "blocksize": conf.get("blocksize", 0)}
    # As zarr builds it: numcodecs from 0.16 takes the type size (it shuffles by it); earlier ones the buffer's.
    if tuple(int(p) for p in numcodecs.__version__.split(".")[:2]) >= (0, 16):
        config["typesize"] = conf["typesize"]
    return Blosc.from_config(config)


def _crc32c(data) -> int:
    import google_crc32c

    return google_crc32c.value(data)  # bytes or a numpy array (it refuses memoryviews)


def morton_order(grid: tuple[int, ...]) -> np.ndarray:
    """Coordinates of every cell of ``grid`` in zarr's Morton order, ``(prod(grid), len(grid)) ndarray of int``.

    The bits of the coordinates interleave, lowest first, dimensions in
    order, each dimension taking as many bits as its size needs (none for a
    size of one); cells sort by the code so made.
    """
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in grid], indexing="ij"), -1).reshape(-1, len(grid))
    bits = [(n - 1).bit_length() for n in grid]
    code = np.zeros(len(coords), dtype=np.uint64)
    out_bit = 0
    for b in range(max(bits, default=0)):
        for d, nb in enumerate(bits):
            if b < nb:
                code |= ((coords[:, d].astype(np.uint64) >> np.uint64(b)) & np.uint64(1)) << np.uint64(out_bit)
                out_bit += 1
    return coords[np.argsort(code, kind="stable")]


@dataclass
class _Sharding:
    inner: tuple[int, ...]  # inner chunk shape
    grid: tuple[int, ...]  # inner chunks per shard
    index_codec: ChunkCodec
    index_at_end: bool
    order: np.ndarray  # (n, ndim) Morton order of the grid

    @property
    def index_nbytes(self) -> int:
        crc = sum(4 for name, _ in self.index_codec.steps if name == "crc32c")
        return 16 * int(np.prod(self.grid)) + crc


class UnitArray:
    """One array of a store whose objects (shards, or plain chunks) are one unit of work deep.

    Objects span every axis past the first (those of an embedding store),
    or, plain chunks only, every axis past the second (a cell store's
    vectors, one chunk per block of cells and variant): those are read, not
    written, here.

    Attributes
    ----------
    path : str
        The array's path in the store.
    rows : int
        Rows (tiles) per object along the first axis: the unit of work.
    shape : tuple of int
        The array's shape.
    """

    def __init__(self, path: str, shape, dtype, outer, fill, codec: ChunkCodec, sharding: _Sharding | None,
                 key_of):
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.outer, self.rows = tuple(outer), int(outer[0])
        self.fill, self.codec, self.sharding, self._key_of = fill, codec, sharding, key_of

    @classmethod
    def of(cls, array) -> "UnitArray | None":
        """The view of a zarr array, or None when its layout or codecs are not ones this module knows."""
        meta = array.metadata
        d = meta.to_dict()
        grid = d.get("chunk_grid", {})
        if d.get("zarr_format") != 3 or grid.get("name") != "regular" or array.ndim == 0:
            return None
        outer = tuple(grid["configuration"]["chunk_shape"])
        if outer[2:] != tuple(array.shape[2:]):  # an object spans every axis past the second
            return None
        dtype = np.dtype(array.dtype)
        codecs = d["codecs"]
        sharding = None
        sharded = len(codecs) == 1 and codecs[0].get("name") == "sharding_indexed"
        if outer[1:2] != tuple(array.shape[1:2]) and sharded:
            return None
        if sharded:
            conf = codecs[0]["configuration"]
            inner = tuple(conf["chunk_shape"])
            index = ChunkCodec.parse(conf.get("index_codecs") or [], np.uint64)
            codec = ChunkCodec.parse(conf["codecs"], dtype)
            if index is None or codec is None or any(o % i for o, i in zip(outer, inner)):
                return None
            if any(name != "crc32c" for name, _ in index.steps):  # a fixed-size index is what readers expect
                return None
            g = tuple(o // i for o, i in zip(outer, inner))
            sharding = _Sharding(inner, g, index, conf.get("index_location", "end") == "end", morton_order(g))
        else:
            codec = ChunkCodec.parse(codecs, dtype)
            if codec is None:
                return None
        fill = np.asarray(array.fill_value if array.fill_value is not None else 0, dtype=dtype)
        return cls(array.path, array.shape, dtype, outer, fill, codec, sharding, meta.encode_chunk_key)

    @property
    def whole_rows(self) -> bool:
        """Whether one object holds whole rows (every variant): what :meth:`encode` writes."""
        return self.outer[1:] == self.shape[1:]

    def key(self, unit: int, column: int = 0) -> str:
        """The store key of unit ``unit``'s object (``column``: its block along the second axis)."""
        rest = (int(column),) + (0,) * (len(self.shape) - 2) if len(self.shape) > 1 else ()
        key = self._key_of((int(unit),) + rest)
        return f"{self.path}/{key}" if self.path else key

    # -- writing ----------------------------------------------------------------------------------------

    def encode(self, block: np.ndarray) -> bytes:
        """The object of one unit holding ``block`` ``(n, *shape[1:])``, ``n`` up to :attr:`rows` (the last
        unit may hold fewer), as zarr writes it with ``write_empty_chunks`` on."""
        n = block.shape[0]
        if not self.whole_rows or block.shape[1:] != self.shape[1:] or not 0 < n <= self.rows:
            raise ValueError(f"{self.path}: a unit block of shape {block.shape} for objects of {self.outer}")
        s = self.sharding
        if s is None:
            if n < self.rows:  # zarr stores whole chunks: the rows past the array's end hold the fill value
                full = np.empty(self.outer, dtype=self.dtype)
                full[:n], full[n:] = block, self.fill
                block = full
            return self.codec.encode(block)
        if n % s.inner[0]:
            raise ValueError(f"{self.path}: {n} rows do not fill inner chunks of {s.inner[0]}")
        block = np.ascontiguousarray(block, dtype=self.dtype)
        index = np.full((*s.grid, 2), MISSING, dtype=np.uint64)
        parts, offset = [], 0
        for coords in s.order:
            if coords[0] * s.inner[0] >= n:  # past the array's end (the last unit): absent
                continue
            piece = self.codec.encode(block[tuple(slice(c * k, (c + 1) * k) for c, k in zip(coords, s.inner))])
            index[tuple(coords)] = (offset, len(piece))
            offset += len(piece)
            parts.append(piece)
        if s.index_at_end:
            return b"".join(parts) + s.index_codec.encode(index)
        present = index[..., 0] != MISSING
        index[present, 0] += np.uint64(s.index_nbytes)
        return s.index_codec.encode(index) + b"".join(parts)

    # -- reading ------------------------------------------------------------------------------------------

    def decode_index(self, data) -> np.ndarray:
        """A shard index from its bytes: ``(*grid, 2) ndarray of uint64`` (offset, length).

        Raises
        ------
        ChunkError
            A checksum that does not match, or an index of the wrong size.
        """
        s = self.sharding
        index = np.empty((*s.grid, 2), dtype=np.uint64)
        if len(data) != s.index_nbytes:
            raise ChunkError(f"a shard index of {len(data)} bytes, expected {s.index_nbytes}")
        s.index_codec.decode(data, index)
        return index

    def inner_chunk(self, at: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """The unit and the inner chunk (coordinates in its shard) holding element ``at`` (leading indices)."""
        s = self.sharding
        at = tuple(int(a) for a in at) + (0,) * (len(self.shape) - len(at))
        if not all(0 <= a < n for a, n in zip(at, self.shape)):
            raise IndexError(f"{self.path}: index {at[:2]} out of range for shape {self.shape}")
        unit = at[0] // self.rows
        return unit, tuple((a - (unit * self.rows if d == 0 else 0)) // k
                           for d, (a, k) in enumerate(zip(at, s.inner)))

    def chunk_shape(self) -> tuple[int, ...]:
        return self.sharding.inner if self.sharding is not None else self.outer

    def decode_unit(self, data, lo: int, hi: int, along: list[int] | None = None) -> np.ndarray:
        """Rows ``lo:hi`` of a unit (counted from its first) from its object's bytes, ``(hi - lo, *shape[1:])``;
        with ``along``, only those indices of the second axis (variants), ``(hi - lo, len(along), *shape[2:])``.
        None bytes: the fill value.

        Only the inner chunks asked for are decoded, each straight into the output.

        Raises
        ------
        ChunkError
            A chunk or shard index that does not decode.
        """
        s = self.sharding
        # Inner chunks of one row (images, labels) or of one row and variant (tokens, scales).
        per_row = s is not None and s.inner == (1, *self.shape[1:])
        by_variant = along is not None and not per_row
        n = hi - lo
        out = np.empty((n, len(along), *self.shape[2:]) if by_variant else (n, *self.shape[1:]), dtype=self.dtype)
        if data is None:
            out[...] = self.fill
        elif s is None:
            block = np.empty(self.outer, dtype=self.dtype)
            self.codec.decode(data, block)
            out[...] = block[lo:hi, along] if by_variant else block[lo:hi]
        elif not per_row and s.inner != (1, 1, *self.shape[2:]):
            raise ChunkError(f"{self.path}: inner chunks of {s.inner} are not read by unit")
        else:
            data = np.frombuffer(data, dtype=np.uint8)
            index = self.decode_index(data[-s.index_nbytes:] if s.index_at_end else data[:s.index_nbytes])
            columns = [(0, 0)] if per_row else list(enumerate(along if along is not None else range(self.shape[1])))
            tail = (0,) * (len(self.shape) - (1 if per_row else 2))
            for r in range(n):
                for pos, j in columns:
                    start, length = index[(lo + r,) + tail if per_row else (lo + r, j) + tail]
                    target = out[r] if per_row else out[r, pos]
                    if start == MISSING:
                        target[...] = self.fill
                    else:
                        self.codec.decode(data[int(start):int(start + length)], target.reshape(s.inner))
        if along is not None and not by_variant:
            out = out[:, along]
        return out


def fetch(zstore, requests: list[tuple[str, object]]) -> list[np.ndarray | None]:
    """Objects of a store, or byte ranges of them: ``(key, zarr ByteRequest or None)`` each, as uint8 arrays
    (None where the object is absent).

    A local directory is read here, in this thread: its reads take microseconds from the page cache, and a
    round trip through zarr's event loop thread cost more than all of a training batch's 40 reads (the two
    threads trading the GIL). Other stores are read through zarr, every request in flight together."""
    import asyncio

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import LocalStore

    if isinstance(zstore, LocalStore):
        return [_read_local(zstore.root / key, byte_range) for key, byte_range in requests]
    proto = default_buffer_prototype()

    async def read_all():
        return await asyncio.gather(*(zstore.get(key, prototype=proto, byte_range=byte_range)
                                      for key, byte_range in requests))

    return [None if buf is None else buf.as_numpy_array() for buf in sync(read_all())]


def _read_local(path, byte_range) -> np.ndarray | None:
    """One file of a local store, or a byte range of it, as zarr's ``LocalStore.get`` reads it."""
    from zarr.abc.store import RangeByteRequest, SuffixByteRequest

    try:
        with open(path, "rb") as f:
            if byte_range is None:
                data = f.read()
            elif isinstance(byte_range, RangeByteRequest):
                f.seek(byte_range.start)
                data = f.read(byte_range.end - byte_range.start)
            elif isinstance(byte_range, SuffixByteRequest):
                size = f.seek(0, 2)
                f.seek(max(0, size - byte_range.suffix))
                data = f.read()
            else:
                raise TypeError(f"unexpected byte range {byte_range!r}")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return np.frombuffer(data, dtype=np.uint8)


def read_chunks(zstore, requests: list[tuple["UnitArray", tuple[int, ...]]], indexes: dict | None = None) -> list:
    """The inner chunks holding each requested element, every byte range read in one :func:`fetch`.

    Parameters
    ----------
    zstore : zarr.abc.store.Store
    requests : list of (UnitArray, leading indices)
        Sharded arrays only; each request names one inner chunk (e.g. ``(tile, variant)`` of tokens whose
        inner chunk is one tile and variant).
    indexes : dict or None
        Shard indexes already read, ``(path, unit) -> index``, kept and added to (a complete store's
        indexes never change); None reads them afresh.

    Returns
    -------
    list of ndarray
        One inner chunk per request (the fill value where the store holds none).

    Raises
    ------
    ChunkError
        A chunk or shard index that does not decode.
    """
    from zarr.abc.store import RangeByteRequest, SuffixByteRequest

    indexes = {} if indexes is None else indexes
    located = [(ua, *ua.inner_chunk(at)) for ua, at in requests]
    wanted = {(ua.path, unit): ua for ua, unit, _ in located if (ua.path, unit) not in indexes}

    if wanted:
        def index_request(ua):
            s = ua.sharding
            return SuffixByteRequest(s.index_nbytes) if s.index_at_end else RangeByteRequest(0, s.index_nbytes)

        got = fetch(zstore, [(ua.key(unit), index_request(ua)) for (_, unit), ua in wanted.items()])
        for (key, ua), data in zip(wanted.items(), got):
            indexes[key] = None if data is None else ua.decode_index(data)
    spans = []
    for ua, unit, coords in located:
        index = indexes[(ua.path, unit)]
        span = None if index is None else index[coords]
        spans.append(None if span is None or span[0] == MISSING else (int(span[0]), int(span[0] + span[1])))

    ranged = [(k, (ua.key(unit), RangeByteRequest(*span)))
              for k, ((ua, unit, _), span) in enumerate(zip(located, spans)) if span is not None]
    data = dict(zip((k for k, _ in ranged), fetch(zstore, [request for _, request in ranged])))
    out = []
    for k, (ua, _, _) in enumerate(located):
        chunk = np.empty(ua.chunk_shape(), dtype=ua.dtype)
        if data.get(k) is None:
            chunk[...] = ua.fill
        else:
            ua.codec.decode(data[k], chunk)
        out.append(chunk)
    return out


def read_rows(zstore, ua: UnitArray, start: int, stop: int, along: list[int] | None = None) -> np.ndarray:
    """Rows ``start:stop`` of an array, every unit's object read whole in one concurrent batch and decoded
    directly (:meth:`UnitArray.decode_unit`): ``(stop - start, *shape[1:])``, or with ``along`` those indices of
    the second axis only.

    Raises
    ------
    ChunkError
        A chunk or shard index that does not decode.
    """
    if stop <= start:
        return ua.decode_unit(None, 0, 0, along)
    units = range(start // ua.rows, (stop - 1) // ua.rows + 1)
    width = ua.outer[1] if len(ua.shape) > 1 else 1
    if ua.whole_rows:
        objects = [(u, 0) for u in units]
    else:  # plain chunks of a block of columns each: the blocks the columns asked for lie in
        columns = list(range(ua.shape[1])) if along is None else along
        objects = [(u, c) for u in units for c in sorted({j // width for j in columns})]

    read = dict(zip(objects, fetch(zstore, [(ua.key(u, c), None) for u, c in objects])))
    if ua.whole_rows:
        blocks = []
        for u in units:
            first = u * ua.rows
            blocks.append(ua.decode_unit(read[u, 0], max(start, first) - first, min(stop, first + ua.rows) - first,
                                         along))
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    out = np.empty((stop - start, len(columns), *ua.shape[2:]), dtype=ua.dtype)
    chunk = np.empty(ua.outer, dtype=ua.dtype)
    for (u, c), data in read.items():
        first = u * ua.rows
        lo, hi = max(start, first), min(stop, first + ua.rows)
        if data is None:
            chunk[...] = ua.fill
        else:
            ua.codec.decode(data, chunk)
        for pos, j in enumerate(columns):
            if j // width == c:
                out[lo - start:hi - start, pos] = chunk[lo - first:hi - first, j - c * width]
    return out


def second_axis(selection, size: int) -> tuple[list[int] | None, bool] | None:
    """A selection of the second axis (variants) for :func:`read_rows`: ``(indices, or None for all; whether the
    axis is dropped)``; None for a selection it does not take (a stepped slice, an array)."""
    if isinstance(selection, (int, np.integer)):
        return [int(selection)], True
    if isinstance(selection, slice):
        if selection == slice(None):
            return None, False
        if selection.step not in (None, 1):
            return None
        return list(range(*selection.indices(size))), False
    if isinstance(selection, list) and all(isinstance(x, (int, np.integer)) for x in selection):
        return [int(x) for x in selection], False
    return None


def rows_of(selection, n: int) -> tuple[int, int] | None:
    """``(start, stop)`` of a slice of rows with no step; None for any other selection."""
    if not isinstance(selection, slice):
        return None
    start, stop, step = selection.indices(n)
    return (start, max(start, stop)) if step == 1 else None
