"""What a decoder command will do, checked before any epoch runs: the one validation the CLI and pipelines share.

``fit-decoder --val sources:image02 --tune sources:image02`` used to train
for its whole schedule and only then refuse to tune on the held-out image;
:func:`check_fit_plan` reads the store's tile records (no features, no
model), draws the split exactly as training will, and refuses every such
plan in one line first.
"""

from __future__ import annotations

from embedcache import files
from embedcache.config import FitConfig
from embedcache.infer.tta import cached_variant_ids, tta_variants
from embedcache.store import open_store
from embedcache.train.loop import variant_ids
from embedcache.train.stream import Split, check_trainable, make_split, tuning_tiles


def check_fit_plan(store, out, config: FitConfig, *, tune: str | None = None, tta: str = "none") -> Split:
    """Refuse a training plan that would fail after training; the split training will draw.

    Checks, in order: ``out`` can be written; the store opens, is complete
    and has labels; the validation and training specs select tiles; the
    variants to train on are cached; the test-time augmentation's variants
    are cached (``tta``, for tuning and the score); the tuning split
    (``tune``) selects tiles apart from training and validation.

    Raises
    ------
    OutputError, StoreError, DataError, ConfigError
        One line each.
    """
    files.check_writable(out)
    s = open_store(store)
    check_trainable(s)
    seed = config.seed if config.split_seed is None else config.split_seed
    split = make_split(s, config.val, config.train, seed)
    variant_ids(s, config.variants)
    if tta != "none":
        cached_variant_ids(s, tta_variants(tta))
    if tune:
        tuning_tiles(s, tune, seed, split)
    return split
