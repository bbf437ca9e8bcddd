"""MoNuSeg as its two archives unzip: 1000x1000 H&E images at 40x with nuclei outlined in Aperio XML.

The release (Kumar et al., 2017/2020, https://monuseg.grand-challenge.org/Data/)
unzips to::

    MoNuSeg 2018 Training Data/Tissue Images/TCGA-A7-A13E-01Z-00-DX1.tif   RGB
    MoNuSeg 2018 Training Data/Annotations/TCGA-A7-A13E-01Z-00-DX1.xml
    MoNuSegTestData/TCGA-2Z-A9J9-01A-01-TS1.tif, TCGA-2Z-A9J9-01A-01-TS1.xml, ...

An annotation file is Aperio ImageScope XML: ``<Annotations MicronsPerPixel="...">``
/ ``<Annotation>`` / ``<Regions>`` / ``<Region Id=...>`` / ``<Vertices>`` /
``<Vertex X=".." Y=".." Z="0"/>``, one Region per nucleus, X the column and Y
the row in pixels. Checked against torch_em
``torch_em/data/datasets/histopathology/monuseg.py`` (the folders
``*/Tissue*/*`` and ``*/Annotations/*``, ``MoNuSegTestData/*.tif`` and
``*.xml``; the training images' organs, from the release's description) and
torch_em's ``generate_labeled_array_from_xml`` (every ``Region``, its
``Vertex`` X and Y, ``skimage.draw.polygon`` with rows Y and columns X) and
CellViT's ``cell_segmentation/datasets/prepare_monuseg.py`` (``Annotation`` /
``Regions`` / ``Region`` whose second child is ``Vertices``, the first its
``Attributes``; float vertices; regions filled in file order, a later one
over an earlier one). ``MicronsPerPixel`` on the root (``0.252000`` in a
MoNuSeg file) is quoted by a MoNuSeg XML parser's documentation in the public
code index (its repository not named there); 40x and the organs of the
training images: torch_em's ``ORGAN_SPLITS`` (from the release's
description), which gives none for the test images.

37 training and 14 test images, and the licence, CC BY-NC-SA 4.0 "as stated
on the source page": the saahilw/nuclei-monuseg dataset card on the Hugging
Face hub (a converted copy); the challenge page itself is not in the sources
read.

Rasterising: each Region becomes instance ``k`` (its position in the file,
from 1) with :func:`skimage.draw.polygon` over its vertices (float
coordinates, clipped to the image). Where outlines overlap, the later Region
in the file wins the pixels, as in torch_em's conversion; an instance left
without a pixel is dropped. A Region of fewer than three vertices is an
error naming the file and the Region. Point at the folder holding both
archives' folders (splits ``train`` and ``test``) or at one of them.
Microns per pixel come from the files' ``MicronsPerPixel``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from embedcache.datasets.images import ImageSetDataset, default_overlap, image_size
from embedcache.datasets.registry import Layout, register
from embedcache.errors import DataError

TRAIN_DIR, TEST_DIR = "MoNuSeg 2018 Training Data", "MoNuSegTestData"

# The organ of each training image (the release's description, as torch_em lists it).
ORGANS = {
    "breast": ["TCGA-A7-A13E-01Z-00-DX1", "TCGA-A7-A13F-01Z-00-DX1", "TCGA-AR-A1AK-01Z-00-DX1",
               "TCGA-AR-A1AS-01Z-00-DX1", "TCGA-E2-A1B5-01Z-00-DX1", "TCGA-E2-A14V-01Z-00-DX1"],
    "kidney": ["TCGA-B0-5711-01Z-00-DX1", "TCGA-HE-7128-01Z-00-DX1", "TCGA-HE-7129-01Z-00-DX1",
               "TCGA-HE-7130-01Z-00-DX1", "TCGA-B0-5710-01Z-00-DX1", "TCGA-B0-5698-01Z-00-DX1"],
    "liver": ["TCGA-18-5592-01Z-00-DX1", "TCGA-38-6178-01Z-00-DX1", "TCGA-49-4488-01Z-00-DX1",
              "TCGA-50-5931-01Z-00-DX1", "TCGA-21-5784-01Z-00-DX1", "TCGA-21-5786-01Z-00-DX1"],
    "prostate": ["TCGA-G9-6336-01Z-00-DX1", "TCGA-G9-6348-01Z-00-DX1", "TCGA-G9-6356-01Z-00-DX1",
                 "TCGA-G9-6363-01Z-00-DX1", "TCGA-CH-5767-01Z-00-DX1", "TCGA-G9-6362-01Z-00-DX1"],
    "bladder": ["TCGA-DK-A2I6-01A-01-TS1", "TCGA-G2-A2EK-01A-02-TSB"],
    "colon": ["TCGA-AY-A8YK-01A-01-TS1", "TCGA-NH-A8F7-01A-01-TS1"],
    "stomach": ["TCGA-KB-A93J-01A-01-TS1", "TCGA-RD-A8N9-01A-01-TS1"],
}
ORGAN_OF = {name: organ for organ, names in ORGANS.items() for name in names}


def read_regions(path: Path) -> tuple[list[np.ndarray], float | None]:
    """The nucleus outlines of an Aperio XML file, ``(n, 2)`` float arrays of (row, col), in file order, and
    its ``MicronsPerPixel`` (None when absent).

    Raises
    ------
    DataError
        Not XML, no Region, or a Region of fewer than three vertices.
    """
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"{path}: cannot read the annotation XML ({exc})") from None
    root = tree.getroot()
    mpp = root.get("MicronsPerPixel")
    outlines = []
    for k, region in enumerate(root.iter("Region"), start=1):
        try:
            xy = [(float(v.get("Y")), float(v.get("X"))) for v in region.iter("Vertex")]
        except (TypeError, ValueError):
            raise DataError(f"{path}: Region {region.get('Id', k)} has a Vertex without numeric X and Y") from None
        if len(xy) < 3:
            raise DataError(f"{path}: Region {region.get('Id', k)} has {len(xy)} vertices; an outline needs at "
                            "least three")
        outlines.append(np.asarray(xy, dtype=np.float64))
    try:
        mpp = float(mpp) if mpp else None
    except ValueError:
        mpp = None
    return outlines, mpp


def rasterise(outlines: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """An instance map ``(H, W) int32`` of outlines: outline ``k`` (from 1) fills its polygon, later outlines
    over earlier ones."""
    from skimage.draw import polygon

    inst = np.zeros(shape, dtype=np.int32)
    for k, rc in enumerate(outlines, start=1):
        rr, cc = polygon(rc[:, 0], rc[:, 1], shape=shape)
        inst[rr, cc] = k
    return inst


def monuseg_splits(path: Path) -> list[tuple[str, Path, Path]]:
    """(split, images folder, annotations folder) of what ``path`` holds."""
    path = Path(path)
    out = []
    for base in (path, path.parent):
        if base.name == TRAIN_DIR or (base / "Tissue Images").is_dir():
            return [("train", base / "Tissue Images", base / "Annotations")]
        if base.name == TEST_DIR:
            return [("test", base, base)]
        if base != path:
            break
    if (path / TRAIN_DIR / "Tissue Images").is_dir():
        out.append(("train", path / TRAIN_DIR / "Tissue Images", path / TRAIN_DIR / "Annotations"))
    if (path / TEST_DIR).is_dir():
        out.append(("test", path / TEST_DIR, path / TEST_DIR))
    return out


class MonusegDataset(ImageSetDataset):
    layout = "monuseg"
    protocol = "hovernet"

    def __init__(self, path, tile_size: int = 256, overlap: int | None = None, **_):
        self.path = Path(path)
        parts = monuseg_splits(self.path)
        if not parts:
            raise DataError(f"{self.path}: not MoNuSeg (no '{TRAIN_DIR}/Tissue Images' or {TEST_DIR})")
        names = ("train", "test")
        files, xmls, folds = [], [], []
        for split, images, annotations in parts:
            found = sorted(images.glob("*.tif"))
            if not found:
                raise DataError(f"{images}: no .tif images")
            for f in found:
                xml = annotations / f"{f.stem}.xml"
                if not xml.exists():
                    raise DataError(f"{xml}: file not found (every image has its annotation XML)")
                files.append(f)
                xmls.append(xml)
                folds.append(names.index(split))
        self._xmls = xmls
        self.has_labels = True
        self.class_names = None
        sizes = [image_size(f) for f in files]
        self._tile_images(files, [f.stem for f in files], tile_size, default_overlap(tile_size, overlap), sizes)
        self.folds = np.asarray(folds, dtype=np.int64)[self.tiles.source]
        self.fold_names, self.splits = list(names), {"train": [0], "test": [1]}
        organs = [ORGAN_OF.get(f.stem) for f in files]
        self.source_tissue = organs if all(organs) else None
        self.tissue = [organs[s] for s in self.tiles.source] if all(organs) else None
        self.mpp = read_regions(xmls[0])[1]

    def _load_label(self, k: int) -> np.ndarray:
        outlines, _ = read_regions(self._xmls[k])
        inst = rasterise(outlines, self.original_shape(k))
        return np.stack([inst, np.zeros_like(inst)], axis=-1)

    def header_problems(self) -> list[DataError]:
        """Annotation files that cannot be read or hold an outline of fewer than three vertices."""
        out = []
        for xml in self._xmls:
            try:
                read_regions(xml)
            except DataError as exc:
                out.append(exc)
        return out

    def _source_files(self):
        return [*self._files, *self._xmls]

    def _files_of_source(self):
        return [[f, x] for f, x in zip(self._files, self._xmls)]


def find_monuseg(path: Path) -> Path | None:
    return path if path.is_dir() and monuseg_splits(path) else None


register(Layout(
    name="monuseg", title="MoNuSeg", find=find_monuseg, open=MonusegDataset,
    url="https://monuseg.grand-challenge.org/Data/ (training and test archives)",
    licence="CC BY-NC-SA 4.0 (non-commercial), as the challenge page states",
    point_at=f"the folder holding '{TRAIN_DIR}' and '{TEST_DIR}' as unzipped, or one of them",
    note="7 organs, 1000x1000 at 40x, nuclei outlined in Aperio XML (rasterised); splits train, test",
))
