"""Where a store lives: a local folder or an fsspec URL (``s3://``, ``gs://``, ``az://``, ...).

Credentials come from the environment of the process that touches the
store (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``GOOGLE_APPLICATION_CREDENTIALS``, ...), read by the filesystem library
itself; so does an S3-compatible endpoint (``AWS_ENDPOINT_URL``).
embedcache never takes them as arguments, refuses them inside a URL, and
never writes them to a log line, an error message, a task sent to dask
workers or the store's attributes.

Local stores are built under ``OUT.partial`` and renamed when complete.
Object stores have no rename: they are built in place, and the group
attribute ``complete`` is the only sign that a store is finished (the
reader reports an unfinished one as incomplete).

>>> StoreLocation.parse("s3://bucket/cache/uni.zarr").name
'uni.zarr'
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from embedcache.errors import ConfigError, EmbedcacheError, StoreError

# What to set when a protocol finds no credentials, and the package it needs.
CREDENTIAL_HINTS = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE); "
          "for an S3-compatible server also AWS_ENDPOINT_URL",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file "
          "(or run `gcloud auth application-default login`)",
    "az": "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_CONNECTION_STRING)",
}
CREDENTIAL_HINTS.update({"s3a": CREDENTIAL_HINTS["s3"], "gcs": CREDENTIAL_HINTS["gs"],
                         "abfs": CREDENTIAL_HINTS["az"], "abfss": CREDENTIAL_HINTS["az"]})
PACKAGES = {"s3": "s3fs (pip install 'embedcache[s3]')", "s3a": "s3fs (pip install 'embedcache[s3]')",
            "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"}
LOCAL_PROTOCOLS = ("file", "local")


@dataclass(frozen=True)
class StoreLocation:
    """A store's place: ``url`` is a local path or ``protocol://bucket/key``.

    Use :meth:`parse`. ``str(location)`` is what messages show; it never
    holds credentials.
    """

    url: str
    protocol: str  # "file" for local folders

    @classmethod
    def parse(cls, where) -> "StoreLocation":
        """A location from a path, a URL or a location.

        Raises
        ------
        ConfigError
            A URL with credentials in it, or with nothing after ``protocol://``.
        StoreError
            An unknown protocol, or one whose filesystem package is not installed.
        """
        if isinstance(where, StoreLocation):
            return where
        text = os.fspath(where) if isinstance(where, os.PathLike) else str(where)
        if "://" not in text:
            return cls(str(Path(text).expanduser()), "file")
        protocol, rest = text.split("://", 1)
        protocol = protocol.lower()
        if protocol in LOCAL_PROTOCOLS:
            return cls(str(Path(rest).expanduser()), "file")
        parts = urlsplit(text)
        if parts.username or parts.password:
            # Not echoing the URL: it holds the secret.
            hint = CREDENTIAL_HINTS.get(protocol, "set them in the environment")
            raise ConfigError(f"a {protocol}:// store URL must not carry credentials (user:password@); "
                              f"remove them from the URL and {hint}")
        rest = rest.rstrip("/")
        if not rest:
            raise ConfigError(f"{text}: no bucket or path after {protocol}://")
        _filesystem_class(protocol, text)
        return cls(f"{protocol}://{rest}", protocol)

    def __str__(self) -> str:
        return self.url

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def name(self) -> str:
        """The last component, e.g. ``uni.zarr``."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def path(self):
        """What a store shows as its path: a :class:`~pathlib.Path` when local, else this location."""
        return Path(self.url) if self.is_local else self

    def absolute(self) -> "StoreLocation":
        """The same place named so another process (a dask worker) finds it."""
        return StoreLocation(str(Path(self.url).absolute()), "file") if self.is_local else self

    @property
    def building(self) -> "StoreLocation":
        """Where a new store is written before it is complete: ``OUT.partial`` locally, in place otherwise."""
        return StoreLocation(self.url + ".partial", "file") if self.is_local else self

    # -- the filesystem --------------------------------------------------------------------------

    def _fs(self):
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.url)
        fs.invalidate_cache(root)  # another process (a dask worker) may have written since we listed
        return fs, root

    def exists(self) -> bool:
        if self.is_local:
            return Path(self.url).exists()
        fs, root = self._fs()
        return bool(fs.exists(root))

    def is_empty(self) -> bool:
        """True when nothing is stored here (a missing folder or prefix counts as empty)."""
        if self.is_local:
            path = Path(self.url)
            return not path.exists() or not any(path.iterdir())
        fs, root = self._fs()
        return not fs.exists(root) or not fs.ls(root, detail=False)

    def remove(self):
        """Delete everything stored here (nothing happens when there is nothing)."""
        if self.is_local:
            if Path(self.url).exists():
                shutil.rmtree(self.url)
            return
        fs, root = self._fs()
        if fs.exists(root):
            fs.rm(root, recursive=True)

    def write_files(self, files: dict[str, bytes]):
        """Write small files (``relative/key`` -> bytes) under this location; remotely in one concurrent batch."""
        if self.is_local:
            for key, data in files.items():
                path = Path(self.url) / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            return
        fs, root = self._fs()
        fs.pipe({f"{root}/{key}": data for key, data in files.items()})

    def nbytes(self, sub: str = "", metadata: bool = True) -> int:
        """Bytes stored under this location (or its ``sub`` folder); ``metadata``: count ``zarr.json`` files."""
        if self.is_local:
            sizes = {str(f): f.stat().st_size for f in (Path(self.url) / sub).rglob("*") if f.is_file()}
        else:
            fs, root = self._fs()
            where = f"{root}/{sub}" if sub else root
            sizes = {k: v["size"] for k, v in fs.find(where, detail=True).items()} if fs.exists(where) else {}
        return sum(n for k, n in sizes.items() if metadata or k.rsplit("/", 1)[-1] != "zarr.json")

    def zarr_store(self, read_only: bool = False):
        """A zarr store object for this location."""
        if self.is_local:
            from zarr.storage import LocalStore

            return LocalStore(self.url, read_only=read_only)
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(self.url, read_only=read_only)

    def open_group(self, mode: str = "r"):
        """Open the Zarr group here (``mode`` as in :func:`zarr.open_group`)."""
        import zarr

        return zarr.open_group(store=self.zarr_store(read_only=mode == "r"), mode=mode)

    @contextlib.contextmanager
    def errors(self):
        """Turn a remote filesystem's failures into one-line :class:`StoreError` s.

        Missing credentials name the environment variables to set. Local
        errors pass through (the CLI already describes ``OSError`` s).
        """
        try:
            yield
        except EmbedcacheError:
            raise
        except Exception as exc:
            if self.is_local:
                raise
            raise StoreError(self.describe_error(exc)) from None

    def describe_error(self, exc: BaseException) -> str:
        """One line for a failure while reaching this (remote) location."""
        hint = CREDENTIAL_HINTS.get(self.protocol, "set the credentials its filesystem library reads")
        kind = type(exc).__name__
        if any("Credential" in c.__name__ or "Authentication" in c.__name__ for c in type(exc).__mro__):
            return f"{self}: no credentials found for {self.protocol}:// storage; {hint}"
        if isinstance(exc, PermissionError):
            return f"{self}: access denied ({exc}); check the credentials ({hint})"
        if isinstance(exc, FileNotFoundError):
            return f"{self}: no such bucket or path ({exc})"
        if isinstance(exc, (ConnectionError, TimeoutError)) or "connect" in kind.lower() or "Endpoint" in kind:
            return (f"{self}: cannot reach the object store ({exc}); check the network and AWS_ENDPOINT_URL "
                    "or its equivalent")
        return f"{self}: {kind}: {exc}"


def _filesystem_class(protocol: str, text: str):
    import fsspec

    try:
        return fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise StoreError(f"{text}: unknown storage protocol {protocol!r}; use a local path or an fsspec URL "
                         "such as s3://bucket/cache/store.zarr") from None
    except ImportError:
        raise StoreError(f"{text}: {protocol}:// storage needs the package "
                         f"{PACKAGES.get(protocol, 'implementing it for fsspec')}") from None
