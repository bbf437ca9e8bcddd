"""The embedding store: schema (array names and codecs), writer, reader."""

from embedcache.store.reader import Store, open_store, verify_store

__all__ = ["Store", "open_store", "verify_store"]
