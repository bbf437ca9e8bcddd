"""Tables, statistics, plots and HTML reports built from results."""

from __future__ import annotations

import math


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KB'`` (binary units)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def plain_json(obj):
    """NaN -> None, tuples -> lists, numpy scalars -> Python: data ``json.dumps`` writes as strict JSON."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): plain_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_json(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
