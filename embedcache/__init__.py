"""embedcache: frozen encoders, cached multi-layer embeddings, light models on top.

Data flows one way through the subpackages: ``datasets`` -> ``encoders`` ->
``extract`` -> ``store`` -> ``train`` and ``probes`` -> ``infer`` (with
``postprocess`` and ``metrics``) -> ``report`` -> ``pipeline``, the ``cli`` on
top; ``errors``, ``config``, ``files``, ``device``, ``layers`` and ``geometry``
are shared by all.
"""

__version__ = "0.1.0"


def open_store(path, mode: str = "r"):
    """Open an embedding store for reading; see :class:`embedcache.store.reader.Store`."""
    from embedcache.store.reader import open_store as _open

    return _open(path, mode=mode)


__all__ = ["__version__", "open_store"]
