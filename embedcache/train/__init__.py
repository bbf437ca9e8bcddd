"""Models trained from a store: the nuclei decoder and the self-supervised descriptors.

``stream`` (samples of a store, splits), ``targets`` (label maps -> training
targets), ``decoder`` (the network and its losses), ``loop`` (``fit``),
``checkpoint`` (run directories), ``pairs`` and ``ssl`` (near/far tile pairs,
the contrastive head and encoder). Probes live in :mod:`embedcache.probes`.
"""
