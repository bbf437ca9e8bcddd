"""Check a dataset before extraction: every problem at once, cheaply.

:func:`check_data` looks at a dataset the way :func:`~embedcache.datasets.open_dataset`
and the readers will, and lists everything they would refuse instead of
stopping at the first one. By default it reads headers only (PIL's
``Image.open`` gives a picture's mode and size without decoding it; ``.npy``
files are memory-mapped, so only their shape and dtype are read);
``pixels=True`` decodes every file through the readers themselves, which also
catches truncated files, label values and colour values.

What is checked, per layout:

folder
    Every image opens and is RGB, or becomes RGB the way the reader makes it
    (an opaque alpha channel is dropped: a note); grayscale, palette and
    other single-channel images are refused by the reader, so they are
    problems here. Label maps: present for every image when any image has
    one, none without its image, single-channel (an RGB-coded instance map
    is named as such), integer, of their image's size. Summary: images,
    sizes, pixels, and the tiles extraction will cut.
pannuke, conic
    Shapes and dtypes of ``images.npy``, ``masks.npy`` / ``labels.npy`` and
    ``types.npy``, and that their counts and tile sizes agree; with
    ``pixels``, every tile's values (and CoNIC type ids against the classes,
    when ``counts.csv`` names them).
slides
    Every slide opens and records its microns per pixel (or ``mpp`` is
    given); nothing is tiled (tissue detection is extraction's work).

``extract`` runs the header-only check first (:func:`require_clean_data`),
so a bad dataset fails before a model loads or a store is created.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedcache.errors import ConfigError, DataError

MAX_TILE_PROBLEMS = 5  # per stack file: more bad tiles are counted in one further problem


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
            lines.append(f"  tiles     {s['tiles']} of {s['tile_size']}x{s['tile_size']} px "
                         f"(overlap {s['overlap']} px) for extract")
        elif self.layout in ("pannuke", "conic") and "images" in s:
            shape = "x".join(str(v) for v in s["tile_shape"]) if s.get("tile_shape") else "?"
            folds = f", in {s['folds']} folds" if s.get("folds", 1) > 1 else ""
            lines.append(f"  images    {s['images']} tiles of {shape} px{folds}, {_mpx(s['pixels'])} in all")
            lines.append(f"  labels    {s['labels']}")
            lines.append(f"  tiles     {s['tiles']} for extract (one per image)")
        elif self.layout == "slides" and "slides" in s:
            sizes = ""
            if s.get("min_size"):
                sizes = f", level 0 {_wh(s['min_size'])} to {_wh(s['max_size'])} px (width x height)"
            lines.append(f"  slides    {s['slides']} ({s['opened']} open, {s['with_mpp']} with microns per pixel)"
                         f"{sizes}")
            lines.append(f"  tiles     at most {s['tiles']} of {s['tile_size']} px at {s['tile_mpp']:g} um/px "
                         "(extract keeps those with tissue)")
        return lines

    def lines(self) -> list[str]:
        """Summary, notes (``note: ...``) and problems (``FILE: message``), as printed."""
        return self.summary_lines() + [f"note: {n}" for n in self.notes] + [str(p) for p in self.problems]


def check_data(path, format: str = "auto", pixels: bool = False, *, tile_size: int = 256,
               overlap: int | None = None, mpp: float | None = None, tile_mpp: float = 0.5) -> DataReport:
    """Every problem extraction would meet in a dataset, listed at once.

    Parameters
    ----------
    path : str or Path
        A dataset folder or one slide, as for :func:`~embedcache.datasets.open_dataset`.
    format : {"auto", "pannuke", "conic", "folder", "slides"}
    pixels : bool
        Decode every image and label map (slow on big datasets; catches
        truncated files and bad values). By default only headers are read.
    tile_size, overlap
        Folder and slides layouts: tiles extraction will cut, for the summary
        (``overlap`` None: a quarter of the tile, as ``extract``).
    mpp, tile_mpp
        Slides: level-0 microns per pixel overriding the files (a slide that
        records none is a problem unless this is given), microns per pixel of
        the tiles (for the summary).

    Returns
    -------
    DataReport
        ``.ok`` when there are no problems.
    """
    from embedcache.datasets import FOLDER_OVERLAP, FORMATS, detect_format

    path = Path(path)
    report = DataReport(path, pixels=bool(pixels))
    if format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    if tile_size < 16:  # folder needs 32 (checked below), slides 16
        raise ConfigError(f"tile size {tile_size} is too small; use at least 16 px (32 for image folders)")
    overlap = tile_size // FOLDER_OVERLAP if overlap is None else int(overlap)
    if not 0 <= overlap <= tile_size // 2:
        raise ConfigError(f"overlap {overlap} px: use 0..{tile_size // 2} px for {tile_size}-px tiles")
    if not path.exists():
        report.problem(path, "no such file or folder")
        return report
    if format == "auto":
        try:
            format = detect_format(path)
        except DataError as exc:
            _add(report, exc, path)
            return report
    report.layout = format
    if format != "slides" and not path.is_dir():
        report.problem(path, f"expected a folder for the {format} layout")
        return report
    if format == "folder":
        if tile_size < 32:
            raise ConfigError(f"tile size {tile_size} is too small; use at least 32 px")
        _check_folder(report, path, pixels, tile_size, overlap)
    elif format == "pannuke":
        _check_pannuke(report, path, pixels)
    elif format == "conic":
        _check_conic(report, path, pixels)
    else:
        _check_slides(report, path, tile_size, mpp, tile_mpp)
    return report


def require_clean_data(path, format: str = "auto", **options) -> DataReport:
    """The header-only :func:`check_data`, raising one line when there are problems (what ``extract`` runs first).

    Raises
    ------
    DataError
        Giving the number of problems and the first, and the ``check-data``
        command that lists them all.
    """
    report = check_data(path, format, pixels=False, **options)
    if not report.ok:
        n = len(report.problems)
        fmt = f" --format {format}" if format != "auto" else ""
        raise DataError(f"{path}: {n} problem{'s' if n != 1 else ''} in the data, the first: {report.problems[0]}; "
                        f"run `embedcache check-data {path}{fmt}` to list them all")
    return report


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
def _add(report: DataReport, exc: Exception, file) -> None:
    """A reader's ``FILE: message`` error as a problem of ``file`` (the prefix split off when it names it)."""
    report.problem(file, str(exc).removeprefix(f"{file}: "))


def _wh(size) -> str:
    return f"{size[0]}x{size[1]}"


def _mpx(n: int) -> str:
    return f"{n / 1e6:.2f} Mpx" if n >= 10_000 else f"{n} px"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__


# ----------------------------------------------------------------------------
# folder layout
# ----------------------------------------------------------------------------
_SINGLE = {"1": "a 1-bit (black and white) image", "L": "a grayscale image", "P": "a palette image",
           "I": "a single-channel 32-bit image", "F": "a single-channel floating-point image"}
_RGB_LIKE = {"YCbCr", "LAB", "HSV"}  # three channels the reader would take as R, G, B


def _image_mode(mode: str) -> tuple[str | None, str | None]:
    """(problem, conversion) for a picture of PIL ``mode``, as ``to_uint8_rgb(np.asarray(im))`` treats it.

    The conversion is the mode of an image the reader makes RGB (by dropping its 4th channel).
    """
    if mode == "RGB":
        return None, None
    if mode in ("RGBA", "RGBa", "RGBX"):
        return None, mode
    if mode in _SINGLE or mode.startswith("I;"):
        what = _SINGLE.get(mode, "a single-channel 16-bit image")
        return f"{what} (mode {mode}); extract reads RGB (height, width, 3) only: save it as 8-bit RGB", None
    if mode in ("LA", "La", "PA"):
        return (f"grayscale with alpha (mode {mode}), 2 channels; extract reads RGB (height, width, 3) only: "
                "save it as 8-bit RGB"), None
    if mode == "CMYK" or mode in _RGB_LIKE:
        return f"{mode} colours would be read as RGB; save it as 8-bit RGB", None
    return f"image mode {mode} is not RGB; save it as 8-bit RGB", None


def _label_header(path: Path):
    """(mode or None, shape (h, w[, c]), dtype or None) of a label map without decoding it."""
    from PIL import Image

    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        return None, tuple(int(s) for s in arr.shape), arr.dtype
    with Image.open(path) as im:
        w, h = im.size
        bands = len(im.getbands())
        return im.mode, (h, w) if bands == 1 else (h, w, bands), None


def _check_label(report: DataReport, p: Path, kind: str, image: Path, image_hw, pixels: bool) -> None:
    from embedcache.datasets.base import check_label_map
    from embedcache.datasets.folder import read_image_file

    what = "instance" if kind == "inst" else "type"
    ids = "instance ids" if kind == "inst" else "type ids"
    try:
        mode, shape, dtype = _label_header(p)
    except Exception as exc:  # PIL, numpy and the OS raise many types for a bad file
        report.problem(p, f"cannot read label map ({_short(exc)})")
        return
    if len(shape) == 3 and shape[-1] in (3, 4):
        coded = f"mode {mode}" if mode else f"shape {shape}"
        report.problem(p, f"an RGB-coded {what} map ({coded}, {shape[-1]} channels); save {ids} as a "
                          "single-channel 16-bit PNG (0 = background)")
        return
    if len(shape) != 2:
        coded = f"mode {mode}, " if mode else ""
        report.problem(p, f"{what} map of shape {shape} ({coded}expected height x width, one channel); save "
                          f"{ids} as a single-channel 16-bit PNG")
        return
    if mode == "1" or (dtype is not None and dtype.kind not in "iuf"):
        got = "a 1-bit (black and white) image" if mode == "1" else f"dtype {dtype}"
        report.problem(p, f"labels must be integers, got {got}; save {ids} as a single-channel 16-bit PNG")
        return
    if image_hw is not None and shape != tuple(image_hw):
        report.problem(p, f"{what} map is {shape[1]}x{shape[0]} px but its image {image.name} is "
                          f"{image_hw[1]}x{image_hw[0]} px (width x height); they must be the same size")
        return
    if pixels:
        try:
            m = check_label_map(read_image_file(p), str(p))
        except DataError as exc:
            _add(report, exc, p)
            return
        if kind == "inst" and m.size and not m.any():
            report.note(f"{p.name}: no nuclei (every instance id is 0)")


def _check_folder(report: DataReport, path: Path, pixels: bool, tile_size: int, overlap: int) -> None:
    from PIL import Image

    from embedcache.datasets.base import to_uint8_rgb
    from embedcache.datasets.folder import IMAGE_SUFFIXES, LABEL_SUFFIXES, find_label_file, list_images, read_image_file
    from embedcache.geometry import plan_tiles

    files = list_images(path)
    summary = report.summary
    summary.update(images=len(files), inst_maps=0, type_maps=0, min_size=None, max_size=None, pixels=0, tiles=0,
                   tile_size=tile_size, overlap=overlap)
    if not files:
        report.problem(path, f"no images found ({', '.join(IMAGE_SUFFIXES)})")
    inst = [find_label_file(path, f.stem, "inst") for f in files]
    types = [find_label_file(path, f.stem, "type") for f in files]
    labelled = sum(p is not None for p in inst)
    summary.update(inst_maps=labelled, type_maps=sum(t is not None and i is not None for i, t in zip(inst, types)))
    sizes, conversions = [], {}
    for f, inst_path, type_path in zip(files, inst, types):
        hw = None
        try:
            with Image.open(f) as im:
                mode, (w, h) = im.mode, im.size
                frames = getattr(im, "n_frames", 1)
        except Exception as exc:  # PIL, numpy and the OS raise many types for a bad file
            report.problem(f, f"cannot read image ({_short(exc)})")
        else:
            hw = (h, w)
            sizes.append((w, h))
            summary["tiles"] += len(plan_tiles(hw, (tile_size, tile_size), overlap))
            problem, conversion = _image_mode(mode)
            if frames > 1:
                report.note(f"{f.name}: holds {frames} frames (pages); only the first is read")
            if problem:
                report.problem(f, problem)
                conversion = None
            elif pixels:
                try:
                    to_uint8_rgb(read_image_file(f), str(f))
                except DataError as exc:
                    _add(report, exc, f)
                    conversion = None
            if conversion:
                conversions.setdefault(conversion, []).append(f.name)
        if inst_path is None and 0 < labelled:
            others = f"{labelled} other image{' has' if labelled == 1 else 's have'} one"
            report.problem(f, f"no {f.stem}_inst.png (or .tif, .tiff, .npy) label map while {others}; give every "
                              "image its NAME_inst.png, or none")
        for p, kind in ((inst_path, "inst"), (type_path, "type")):
            if p is not None and (kind == "inst" or inst_path is not None):
                _check_label(report, p, kind, f, hw, pixels)
    if labelled == 0 and any(p is not None for p in types):
        report.note("type maps without instance maps are ignored: the dataset is read without labels")
    for mode, names in conversions.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        many = len(names) != 1
        checked = (f"{'all are' if many else 'it is'} fully opaque" if pixels else
                   f"{'they' if many else 'it'} must be fully opaque (transparent pixels are refused; --pixels checks)")
        report.note(f"{len(names)} {mode} image{'s' if many else ''} ({shown}): converted to RGB by dropping the "
                    f"4th channel; {checked}")
    if sizes:
        by_area = sorted(sizes, key=lambda s: (s[0] * s[1], s))
        summary.update(min_size=by_area[0], max_size=by_area[-1], pixels=sum(w * h for w, h in sizes))

    # Label maps the reader never reads: beside no image, or shadowed by another suffix.
    stems = {f.stem for f in files}
    seen: dict[str, list[Path]] = {}
    for p in sorted(path.iterdir()):
        if not p.is_file() or not p.stem.endswith(("_inst", "_type")):
            continue
        if p.suffix not in LABEL_SUFFIXES:
            if p.suffix.lower() in IMAGE_SUFFIXES + (".npy",):
                report.note(f"{p.name} is not read: label maps are {', '.join(LABEL_SUFFIXES)} (lower case)"
                            + ("; JPEG changes the ids" if p.suffix.lower() in (".jpg", ".jpeg") else ""))
            continue
        base = p.stem[:-5]
        seen.setdefault(p.stem, []).append(p)
        if base not in stems:
            report.problem(p, f"label map without an image: no {base}.png (or .tif, .tiff, .jpg, .jpeg) beside it")
    for stem, group in seen.items():
        if len(group) > 1 and stem[:-5] in stems:
            used = min(group, key=lambda q: LABEL_SUFFIXES.index(q.suffix))
            others = ", ".join(q.name for q in group if q != used)
            report.note(f"{used.name} is read; {others} ignored")


# ----------------------------------------------------------------------------
# stacks (PanNuke, CoNIC)
# ----------------------------------------------------------------------------
def _npy(report: DataReport, path: Path, required: bool):
    from embedcache.datasets.stacks import _load

    try:
        return _load(path, required=required)
    except DataError as exc:
        _add(report, exc, path)
        return None


def _tiles_of(a) -> str:
    return f"{a.shape[0]} tiles of {a.shape[2]}x{a.shape[1]}" if a.ndim >= 3 else f"shape {a.shape}"


def _images_header(report: DataReport, images, file: Path) -> bool:
    """Shape and dtype of an images stack as the readers take it; False when refused."""
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        report.problem(file, f"expected images of shape (N, H, W, 3), got {images.shape}")
        return False
    if images.dtype.kind not in "iuf":
        report.problem(file, f"pixels must be numbers, got dtype {images.dtype}")
        return False
    if images.dtype != np.uint8:
        report.note(f"{file.name}: {images.dtype} pixels, rounded to uint8 when read"
                    + ("" if report.pixels else " (values checked with --pixels)"))
    if images.shape[-1] == 4:
        report.note(f"{file.name}: the 4th channel is dropped when read (it must be fully opaque)")
    return True


def _labels_dtype(report: DataReport, arr, file: Path) -> bool:
    if arr.dtype.kind not in "iuf":
        report.problem(file, f"labels must be integers, got dtype {arr.dtype}")
        return False
    return True


class _TileProblems:
    """Bad tiles of one stack file: the first few as problems, the rest counted in one more."""

    def __init__(self, report: DataReport, file: Path):
        self.report, self.file, self.n = report, file, 0

    def add(self, i: int, exc: DataError) -> None:
        self.n += 1
        if self.n <= MAX_TILE_PROBLEMS:
            text = str(exc)
            head = f"tile {i}: "
            self.report.problem(self.file, text if text.startswith(head) else head + text)

    def close(self) -> None:
        if self.n > MAX_TILE_PROBLEMS:
            self.report.problem(self.file, f"{self.n - MAX_TILE_PROBLEMS} more tiles with problems "
                                           f"({self.n} in all)")


def _scan(report: DataReport, arr, file: Path, check, block: int = 64) -> None:
    """Run ``check(tile, i)`` (raising DataError) over every tile of a stack, reading ``block`` tiles at a time."""
    bad = _TileProblems(report, file)
    for start in range(0, len(arr), block):
        chunk = np.asarray(arr[start:start + block])
        for j, tile in enumerate(chunk):
            try:
                check(tile, start + j)
            except DataError as exc:
                bad.add(start + j, exc)
    bad.close()


def _check_image_pixels(tile, i):
    from embedcache.datasets.base import to_uint8_rgb

    to_uint8_rgb(tile, f"tile {i}")


def _check_pannuke(report: DataReport, path: Path, pixels: bool) -> None:
    from embedcache.datasets.base import check_label_map
    from embedcache.datasets.stacks import pannuke_fold_dirs

    dirs = pannuke_fold_dirs(path)
    s = report.summary
    s.update(images=0, tile_shape=None, pixels=0, tiles=0, folds=len(dirs), labels="masks.npy, none readable")
    if not dirs:
        report.problem(path, "no masks.npy found (PanNuke layout: images.npy, masks.npy, types.npy per fold)")
        return
    shapes, dtypes = set(), set()
    for d in dirs:
        images = _npy(report, d / "images.npy", required=True)
        masks = _npy(report, d / "masks.npy", required=True)
        types = _npy(report, d / "types.npy", required=False)
        images_ok = images is not None and _images_header(report, images, d / "images.npy")
        masks_ok = masks is not None
        if masks_ok and (masks.ndim != 4 or masks.shape[-1] != 6):
            report.problem(d / "masks.npy", f"expected shape (N, H, W, 6), got {masks.shape}")
            masks_ok = False
        masks_ok = masks_ok and _labels_dtype(report, masks, d / "masks.npy")
        if images_ok and masks_ok and images.shape[:3] != masks.shape[:3]:
            report.problem(d, f"images.npy holds {_tiles_of(images)} px but masks.npy {_tiles_of(masks)} px; "
                              "they must agree tile for tile")
        if types is not None and masks_ok and len(types) != len(masks):
            report.problem(d / "types.npy", f"{len(types)} tissue names for {len(masks)} tiles in masks.npy")
        ref = images if images_ok else (masks if masks_ok else None)
        if ref is not None:
            shapes.add(tuple(int(v) for v in ref.shape[1:3]))
            s["images"] += int(ref.shape[0])
            s["pixels"] += int(np.prod(ref.shape[:3]))
        if masks_ok:
            dtypes.add(str(masks.dtype))
        if pixels and images_ok:
            _scan(report, images, d / "images.npy", _check_image_pixels)
        if pixels and masks_ok:
            _scan(report, masks, d / "masks.npy", lambda t, i: check_label_map(t, f"tile {i}"))
    if len(shapes) > 1:
        report.problem(path, f"folds have different tile sizes {sorted(shapes)}")
    s["tile_shape"] = next(iter(shapes)) if len(shapes) == 1 else None
    s["tiles"] = s["images"]
    s["labels"] = f"masks.npy ({', '.join(sorted(dtypes)) or 'none readable'}), 5 PanNuke classes"
    if shapes and s["images"] == 0:
        report.problem(path, "the dataset has no tiles")


def _check_conic(report: DataReport, path: Path, pixels: bool) -> None:
    from embedcache.datasets.base import check_label_map
    from embedcache.datasets.stacks import _conic_class_names

    images = _npy(report, path / "images.npy", required=True)
    labels = _npy(report, path / "labels.npy", required=False)
    s = report.summary
    images_ok = images is not None and _images_header(report, images, path / "images.npy")
    labels_ok = labels is not None
    if labels_ok and (labels.ndim != 4 or labels.shape[-1] != 2):
        report.problem(path / "labels.npy", f"expected shape (N, H, W, 2) [instance, class], got {labels.shape}")
        labels_ok = False
    labels_ok = labels_ok and _labels_dtype(report, labels, path / "labels.npy")
    if images_ok and labels_ok and images.shape[:3] != labels.shape[:3]:
        report.problem(path, f"images.npy holds {_tiles_of(images)} px but labels.npy {_tiles_of(labels)} px; "
                             "they must agree tile for tile")
    try:
        classes = _conic_class_names(path / "counts.csv")
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        report.problem(path / "counts.csv", f"cannot read ({_short(exc)})")
        classes = None
    ref = images if images_ok else None
    s.update(images=int(ref.shape[0]) if ref is not None else 0,
             tile_shape=tuple(int(v) for v in ref.shape[1:3]) if ref is not None else None,
             pixels=int(np.prod(ref.shape[:3])) if ref is not None else 0, folds=1,
             labels=(f"labels.npy ({labels.dtype}), " + (f"{len(classes)} CoNIC classes" if classes
                                                         else "class names unknown (no counts.csv naming them)"))
             if labels_ok else "none (no labels.npy)")
    s["tiles"] = s["images"]
    if ref is not None and len(ref) == 0:
        report.problem(path, "the dataset has no tiles")
    if pixels and images_ok:
        _scan(report, images, path / "images.npy", _check_image_pixels)
    if pixels and labels_ok:
        top = max(classes) if classes else None
        found: set[int] = set()

        def check(tile, i):
            m = check_label_map(tile, f"tile {i}")
            used = set(np.unique(m[..., 1]).tolist())
            found.update(used)
            if top is not None and max(used) > top:
                raise DataError(f"tile {i}: type id {max(used)} outside the classes 0..{top}")

        _scan(report, labels, path / "labels.npy", check)
        if found:
            report.note(f"labels.npy: type ids used: {', '.join(str(t) for t in sorted(found))}")


# ----------------------------------------------------------------------------
# slides
# ----------------------------------------------------------------------------
def _check_slides(report: DataReport, path: Path, tile_size: int, mpp: float | None, tile_mpp: float) -> None:
    from embedcache.datasets.wsi import SLIDE_SUFFIXES, list_slides, open_slide, working_shape

    if mpp is not None and not mpp > 0:
        raise ConfigError(f"mpp must be positive, got {mpp}")
    if not tile_mpp > 0:
        raise ConfigError(f"tile_mpp must be positive, got {tile_mpp}")
    files = list_slides(path)
    s = report.summary
    s.update(slides=len(files), opened=0, with_mpp=0, min_size=None, max_size=None, pixels=0, tiles=0,
             tile_size=tile_size, tile_mpp=tile_mpp)
    if not files:
        report.problem(path, f"no slides found ({', '.join(SLIDE_SUFFIXES)})")
        return
    sizes = []
    for f in files:
        try:
            slide = open_slide(f)
        except DataError as exc:
            _add(report, exc, f)
            continue
        try:
            dims, recorded = list(slide.dims), slide.mpp
        finally:
            slide.close()
        s["opened"] += 1
        (h, w) = dims[0]
        sizes.append((w, h))
        used = mpp or recorded
        if recorded is not None:
            s["with_mpp"] += 1
        if used is None:
            report.problem(f, "the slide does not record its microns per pixel; pass --mpp "
                              "(level-0 um/px, e.g. 0.25 at 40x, 0.5 at 20x)")
            scale = "no microns per pixel"
        else:
            wh, ww = working_shape((h, w), used, tile_mpp)
            s["tiles"] += (wh // tile_size) * (ww // tile_size)
            scale = (f"{used:g} um/px" + (" (--mpp)" if mpp else "")
                     + (f", the file records {recorded:g}" if mpp and recorded and recorded != mpp else ""))
        report.note(f"{f.name}: {w}x{h} px at level 0, {len(dims)} level{'s' if len(dims) != 1 else ''}, {scale}")
    if sizes:
        by_area = sorted(sizes, key=lambda v: (v[0] * v[1], v))
        s.update(min_size=by_area[0], max_size=by_area[-1], pixels=sum(a * b for a, b in sizes))
