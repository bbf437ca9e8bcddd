"""Tiles encoded per grid tile when slide regions share their margins (SharedTiles, its default limit), simulated
over tissue-filled slides of several sizes with no encoder: against encoding every read box whole, and the most
tiles kept. Regions of 2048 px, 320-px margins, 256-px tiles 64 px apart, batches of 8.

    python benchmarks/bench_shared_tiles.py
"""

from __future__ import annotations

import numpy as np

from embedcache.geometry import plan_regions, plan_tiles
from embedcache.infer.slide_cells import SharedTiles, kept_limit, tile_uses
from embedcache.infer.slides import on_tile_grid


class Counting:
    """A feature source that only counts the tiles it is asked to encode."""

    def __init__(self):
        self.n = 0

    def __call__(self, keys):
        self.n += len(keys)
        return [np.zeros((len(keys), 1))], None


def main():
    for H, W in [(8192, 8192), (8192, 12288), (16384, 16384), (8192, 24576)]:
        regs = on_tile_grid(plan_regions((H, W), 2048, 320), (H, W), (256, 256), 64)
        uses = tile_uses(regs, (256, 256), 64)
        f = Counting()
        st = SharedTiles(f, uses, kept_limit(regs, (256, 256), 64))
        most = 0
        batch = []
        for r in regs:
            q0, d0, q1, d1 = r.read
            for o in plan_tiles((q1 - q0, d1 - d0), (256, 256), 64):
                batch.append(((q0 + o[0], d0 + o[1]), np.zeros(1)))
                if len(batch) == 8:
                    st(batch)
                    batch = []
                    most = max(most, len(st.kept))
        if batch:
            st(batch)
        reads = sum(len(v) for v in uses.values())
        print(f"{H}x{W}: encoded/distinct {f.n / len(uses):.3f}, every read box whole {reads / len(uses):.3f}, "
              f"most kept {most} (limit {st.limit})")


if __name__ == "__main__":
    main()
