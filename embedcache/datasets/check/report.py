"""What a data check found: problems (file and why), notes and a summary, as ``check-data`` prints them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """Something the readers would refuse: the file and why."""

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass
class DataReport:
    """What :func:`check_data` found.

    Attributes
    ----------
    path : Path
    layout : str or None
        The layout read (None when it could not be told).
    problems : list of Problem
        Everything extraction would refuse; empty when the data is fine.
    notes : list of str
        Conversions that will be applied and other things worth knowing.
    summary : dict
        Counts and sizes: ``images``, ``min_size`` / ``max_size`` (width,
        height), ``pixels``, ``tiles`` and per-layout extras.
    pixels : bool
        Whether pixels were decoded (else headers only).
    """

    path: Path
    layout: str | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    pixels: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, file, message: str) -> None:
        self.problems.append(Problem(str(file), message))

    def note(self, message: str) -> None:
        if message not in self.notes:  # one note for the same conversion of every fold
            self.notes.append(message)

    def summary_lines(self) -> list[str]:
        """The summary as printed by ``embedcache check-data``."""
        s = self.summary
        how = "pixels decoded" if self.pixels else "headers checked (--pixels decodes every file)"
        if self.layout is None:
            return [f"{self.path}: layout not known"]
        lines = [f"{self.path}: {self.layout} layout, {how}"]
        if self.layout == "folder" and "images" in s:
            sizes = ""
            if s.get("min_size"):
                sizes = f", {_wh(s['min_size'])} to {_wh(s['max_size'])} px (width x height)"
            lines.append(f"  images    {s['images']}{sizes}, {_mpx(s['pixels'])} in all")
            lines.append(f"  labels    {s['inst_maps']} instance maps, {s['type_maps']} type maps")
            lines += _tile_lines(s)
        elif s.get("stack") and "images" in s:
            shape = "x".join(str(v) for v in s["tile_shape"]) if s.get("tile_shape") else "?"
            folds = f", in {s['folds']} folds" if s.get("folds", 1) > 1 else ""
            lines.append(f"  images    {s['images']} tiles of {shape} px{folds}, {_mpx(s['pixels'])} in all")
            lines.append(f"  labels    {s['labels']}")
            sources = f" cut from {s['sources']} source images" if s.get("sources") else ""
            lines.append(f"  tiles     {s['tiles']} for extract (one per image){sources}")
        elif s.get("release") and "images" in s:
            lines.append(f"  images    {s['images']}")
            lines.append(f"  labels    {s['labels']}")
            lines += _tile_lines(s)
        elif self.layout == "slides" and "slides" in s:
            sizes = ""
            if s.get("min_size"):
                sizes = f", level 0 {_wh(s['min_size'])} to {_wh(s['max_size'])} px (width x height)"
            lines.append(f"  slides    {s['slides']} ({s['opened']} open, {s['with_mpp']} with microns per pixel)"
                         f"{sizes}")
            lines.append(f"  tiles     at most {s['tiles']} of {s['tile_size']} px at {s['tile_mpp']:g} um/px "
                         "(extract keeps those with tissue)")
        if s.get("nuclei"):
            lines.append("  nuclei    " + ", ".join(f"{k} {v}" for k, v in s["nuclei"].items()))
        if s.get("splits"):
            lines.append("  splits    " + ", ".join(f"{k} {v} tile{'s' if v != 1 else ''}"
                                                    for k, v in s["splits"].items()))
        return lines

    def lines(self) -> list[str]:
        """Summary, notes (``note: ...``) and problems (``FILE: message``), as printed."""
        return self.summary_lines() + [f"note: {n}" for n in self.notes] + [str(p) for p in self.problems]


def _add(report: DataReport, exc: Exception, file) -> None:
    """A reader's ``FILE: message`` error as a problem of the file it names when that lies in ``file`` (the
    dataset's folder), else of ``file``."""
    head, sep, rest = str(exc).partition(": ")
    if sep and (head == str(file) or head.startswith(f"{file}/")):
        report.problem(head, rest)
    else:
        report.problem(file, str(exc))


def _tile_lines(s: dict) -> list[str]:
    """The tiles extract will cut from whole images and, when known, each image's resolution."""
    lines = [f"  tiles     {s['tiles']} of {s['tile_size']}x{s['tile_size']} px (overlap {s['overlap']} px) "
             "for extract"]
    if s.get("resolution"):
        parts = [f"{n} at {m:g} um/px ({source})" if m is not None else
                 f"{n} unknown (no metadata, mpp.csv or --mpp)" for m, source, n in s["resolution"]]
        lines.append("  mpp       " + ", ".join(parts))
    return lines


def _wh(size) -> str:
    return f"{size[0]}x{size[1]}"


def _mpx(n: int) -> str:
    return f"{n / 1e6:.2f} Mpx" if n >= 10_000 else f"{n} px"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__
