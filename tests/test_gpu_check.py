"""The GPU check script runs end to end (tiny sizes on the CPU with --dry-run), printing every figure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_dry_run_prints_every_figure(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--work", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0].startswith("device CPU") and "dry run True" in lines[0]
    rows = [ln for ln in lines if " px  bare " in ln]
    assert len(rows) == 4  # two encoders x two tile sizes
    for row in rows:
        ratio = float(row.split("ratio ")[1].split()[0])
        mbs = float(row.split("write path ")[1].split()[0])
        assert 0 < ratio and mbs > 0, row
    assert any(ln.startswith("decoder steps/s") and "cached/live" in ln for ln in lines)
    read = [ln for ln in lines if ln.startswith("read path")]
    assert len(read) == 1 and float(read[0].split("disk/RAM ")[1].split()[0]) > 0, read
    assert (tmp_path / "ViT-S-stand-in-96.zarr").is_dir()  # the stores it measured are real stores
