"""The embedding store, the only code that knows its layout.

``schema`` (array paths, codecs and the typed attributes record), ``location``
(local folders and fsspec URLs), ``writer`` (units of work, finishing, pooled
layers added later), ``reader`` (:class:`Store` and its typed properties), ``verify``
(completeness and checksums, the damaged units) and ``images`` (a store's tiles put back into their source images, with their truth).
"""

from embedcache.store.reader import Store, open_store
from embedcache.store.verify import verify_store

__all__ = ["Store", "open_store", "verify_store"]
