"""Published datasets as their archives unzip, made small in code: the same tree, file names, dtypes, shapes,
channel order, .mat keys, XML and CSV headers as the releases (the source of each fact is in the reader's
docstring: embedcache/datasets/<name>.py), with few and small images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedcache.datasets.synthetic import labels_to_pannuke_masks, make_tiles

CONIC_HEADER = "neutrophil,epithelial,lymphocyte,plasma,eosinophil,connective"


# The synthetic tissues under names of PanNuke's 19 (PanNuke-metrics run.py ``tissue_types``), as types.npy
# writes them.
PANNUKE_TISSUE = {"breast": "Breast", "colon": "Colon", "lymph_node": "Adrenal_gland", "skin": "Skin",
                  "liver": "Bile-duct"}


def write_pannuke_release(root: Path, sizes=(2, 2, 2), seed: int = 0):
    """``Fold N/images/foldN/{images,types}.npy``, ``Fold N/masks/foldN/masks.npy`` and the README files
    (``Fold N/README.md``, ``Fold N/masks/{README.md,by-nc-sa.md}``) for N = 1.. len(sizes).

    Images and masks float64 as released; masks channels 0..4 the instance ids of neoplastic, inflammatory,
    connective, dead and epithelial nuclei, channel 5 background (1 where no nucleus); ``types.npy`` a numpy
    str array of PanNuke tissue names. Returns the (images uint8, labels, tissue) of every tile, in fold order.
    """
    images, labels, tissue = make_tiles(sum(sizes), seed=seed, size=256)
    tissue = [PANNUKE_TISSUE[t] for t in tissue]
    start = 0
    for k, n in enumerate(sizes, start=1):
        sel = slice(start, start + n)
        start += n
        img_dir = root / f"Fold {k}" / "images" / f"fold{k}"
        mask_dir = root / f"Fold {k}" / "masks" / f"fold{k}"
        img_dir.mkdir(parents=True)
        mask_dir.mkdir(parents=True)
        np.save(img_dir / "images.npy", images[sel].astype(np.float64))
        np.save(img_dir / "types.npy", np.asarray(tissue[sel]))
        np.save(mask_dir / "masks.npy", labels_to_pannuke_masks(labels[sel]).astype(np.float64))
        for readme in (root / f"Fold {k}" / "README.md", mask_dir.parent / "README.md", mask_dir.parent / "by-nc-sa.md"):
            readme.write_text("PanNuke\n")
    return images, labels, tissue


def write_conic_release(root: Path, patches: list[str], seed: int = 0):
    """``images.npy`` (N, 256, 256, 3) uint8, ``labels.npy`` (N, 256, 256, 2) uint16 [instance ids 0..n per
    patch, CoNIC classes 0..6], ``counts.csv`` (the six class names; nuclei in the central 224x224, as the
    release's ``extract_patches.py`` counts them) and ``patch_info.csv`` (header ``patch_info``) naming
    ``patches``.

    Returns (images, labels).
    """
    root.mkdir(parents=True, exist_ok=True)
    n = len(patches)
    images, labels, _ = make_tiles(n, seed=seed, size=256)
    labels = labels.copy()
    labels[..., 1] = np.where(labels[..., 0] > 0, labels[..., 0] % 6 + 1, 0)  # CoNIC's six classes
    labels = labels.astype(np.uint16)
    np.save(root / "images.npy", images)
    np.save(root / "labels.npy", labels)
    rows = [CONIC_HEADER]
    for lab in labels[:, 16:240, 16:240]:
        rows.append(",".join(str(len(np.unique(lab[..., 0][lab[..., 1] == c]))) for c in range(1, 7)))
    (root / "counts.csv").write_text("\n".join(rows) + "\n")
    (root / "patch_info.csv").write_text("\n".join(["patch_info", *patches]) + "\n")
    return images, labels


def conic_patch_names(images_per_cohort: int = 3, patches_per_image: int = 2) -> list[str]:
    """Patch names of the release's form ``<cohort>_<k>-<patch>`` for the five Lizard cohorts."""
    return [f"{cohort}_{k}-{p:04d}" for cohort in ("consep", "crag", "dpath", "glas", "pannuke")
            for k in range(1, images_per_cohort + 1) for p in range(patches_per_image)]


CYTODARK0_NAMES = {"20x": ("ID1_Aud_Cortex_Tursiops", "ID2_Aud_Cortex_Tursiops", "ID57_Cerebellum_Chimpanzee",
                            "ID62_Visual_Cortex_Chimpanzee"),
                    "40x": ("ID54_Cerebellum_Bovine",)}


def write_cytodark0_release(root: Path, folds=(0, 0, 1, 2), seed: int = 0, magnifications=("20x", "40x")):
    """``cytoDArk0/<mag>/<size>/{image/NAME.png, label/NAME.tiff, graymask4/NAME.png, folds.csv}`` with images
    of the release's size (1024x1024 at 20x, 2048x2048 at 40x; one image at 40x), names of the release's form
    (``ID<k>_<area>_<species>``, :data:`CYTODARK0_NAMES`), RGB uint8 PNGs, uint16 TIFF instance maps and
    ``folds.csv`` (``img_id,fold``). Returns {stem: (image, inst)} of the 20x images."""
    import tifffile
    from PIL import Image

    sizes = {"20x": ("1024x1024", 1024), "40x": ("2048x2048", 2048)}
    out = {}
    for mag in magnifications:
        folder, side = sizes[mag]
        base = root / "cytoDArk0" / mag / folder
        for sub in ("image", "label", "graymask4"):
            (base / sub).mkdir(parents=True)
        rows = ["img_id,fold"]
        n = len(folds) if mag == "20x" else 1
        for k in range(n):
            stem = CYTODARK0_NAMES[mag][k]
            rng = np.random.default_rng(seed + k)
            image = rng.integers(90, 200, (side, side, 3), dtype=np.uint8)
            inst = np.zeros((side, side), np.uint16)
            for j in range(4):
                r, c = 100 + 200 * j, 80 + 230 * j
                inst[r:r + 30, c:c + 24] = j + 1
            Image.fromarray(image).save(base / "image" / f"{stem}.png")
            tifffile.imwrite(base / "label" / f"{stem}.tiff", inst)
            Image.fromarray(((inst > 0) * 2).astype(np.uint8)).save(base / "graymask4" / f"{stem}.png")
            rows.append(f"{stem},{folds[k] if mag == '20x' else 0}")
            if mag == "20x":
                out[stem] = (image, inst)
        (base / "folds.csv").write_text("\n".join(rows) + "\n")
    return out


def nuclei_map(h: int, w: int, n: int, seed: int = 0) -> np.ndarray:
    """An instance map (float64, as MATLAB saves it) of ``n`` separate rectangles, ids 1..n."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((h, w))
    for k in range(1, n + 1):
        r, c = (k - 1) * (h // n) + 2, int(rng.integers(0, w - 20))
        inst[r:r + max(3, h // n - 4), c:c + 15] = k
    return inst


def write_consep_release(root: Path, train: int = 2, test: int = 1, side: int = 1000):
    """``CoNSeP/README.txt`` and ``CoNSeP/{Train,Test}/{Images,Labels,Overlay}``: ``train_K.png`` / ``test_K.png``
    RGBA 1000x1000, and ``.mat`` files (scipy.io.savemat) with ``inst_map``, ``type_map`` (0..7), ``inst_type`` (N, 1) and
    ``inst_centroid`` (N, 2: x, y), all float64. Returns {"Train/train_1": (rgba, inst, types)}."""
    from PIL import Image
    from scipy.io import savemat

    out = {}
    for split, n in (("Train", train), ("Test", test)):
        for sub in ("Images", "Labels", "Overlay"):
            (root / "CoNSeP" / split / sub).mkdir(parents=True)
    (root / "CoNSeP" / "README.txt").write_text("Colorectal Nuclear Segmentation and Phenotypes (CoNSeP) Dataset\n")
    for split, n in (("Train", train), ("Test", test)):
        for k in range(1, n + 1):
            name = f"{split.lower()}_{k}"
            rng = np.random.default_rng(k + 10 * len(out))
            rgba = np.concatenate([rng.integers(0, 255, (side, side, 3), dtype=np.uint8),
                                   np.full((side, side, 1), 255, np.uint8)], axis=-1)
            inst = nuclei_map(side, side, 14, seed=k)
            inst_type = np.asarray([[(j % 7) + 1] for j in range(14)], dtype=np.float64)
            types = np.where(inst > 0, inst_type[np.maximum(inst.astype(int) - 1, 0), 0], 0)
            ys, xs = np.nonzero(inst)
            centroid = np.asarray([[xs[inst[ys, xs] == j].mean(), ys[inst[ys, xs] == j].mean()] for j in range(1, 15)])
            Image.fromarray(rgba).save(root / "CoNSeP" / split / "Images" / f"{name}.png")
            Image.fromarray(rgba[..., :3]).save(root / "CoNSeP" / split / "Overlay" / f"{name}.png")
            savemat(root / "CoNSeP" / split / "Labels" / f"{name}.mat",
                    {"inst_map": inst, "type_map": types, "inst_type": inst_type, "inst_centroid": centroid})
            out[f"{split}/{name}"] = (rgba, inst.astype(np.int32), types.astype(np.int32))
    return out


def write_cpm17_release(root: Path, sizes=((500, 500), (600, 600)), test: int = 1):
    """``cpm17/{train,test}/{Images,Labels}``: ``image_NN.png`` RGB and ``image_NN.mat`` with ``inst_map``
    (float64) only. Returns {"train/image_00": (rgb, inst)}."""
    from PIL import Image
    from scipy.io import savemat

    out = {}
    for split, shapes in (("train", sizes), ("test", sizes[:test])):
        for sub in ("Images", "Labels"):
            (root / "cpm17" / split / sub).mkdir(parents=True)
        for k, (h, w) in enumerate(shapes):
            name = f"image_{k:02d}"
            rgb = np.random.default_rng(k).integers(0, 255, (h, w, 3), dtype=np.uint8)
            inst = nuclei_map(h, w, 9, seed=k)
            Image.fromarray(rgb).save(root / "cpm17" / split / "Images" / f"{name}.png")
            savemat(root / "cpm17" / split / "Labels" / f"{name}.mat", {"inst_map": inst})
            out[f"{split}/{name}"] = (rgb, inst.astype(np.int32))
    return out


def write_lizard_release(root: Path, images=(("consep_1", "test_14", 1, (300, 420)),
                                             ("crag_1", "train_105", 2, (256, 300)),
                                             ("glas_2", "train_22", 3, (280, 256)))):
    """``Lizard_Images1/``, ``Lizard_Images2/`` (RGB PNGs, split between them), ``Lizard_Labels/Labels/NAME.mat``
    (``inst_map`` int32, ``id``, ``class`` (N, 1), ``bbox`` (N, 4: y1, y2, x1, x2), ``centroid`` (N, 2: x, y)) and
    ``Lizard_Labels/info.csv`` (``Filename,Source,Split``; ``Source`` the image's name in its original dataset).
    ``images``: (name, source, split, (H, W)). Returns {name: (rgb, inst, types)}."""
    from PIL import Image
    from scipy.io import savemat

    for sub in ("Lizard_Images1", "Lizard_Images2", "Lizard_Labels/Labels"):
        (root / sub).mkdir(parents=True)
    rows, out = ["Filename,Source,Split"], {}
    for k, (name, source, split, (h, w)) in enumerate(images):
        rgb = np.random.default_rng(k).integers(0, 255, (h, w, 3), dtype=np.uint8)
        inst = nuclei_map(h, w, 8, seed=k).astype(np.int32)
        ids = np.arange(1, 9).reshape(-1, 1)
        classes = ((ids + k) % 6 + 1).astype(np.int64)
        bbox = np.zeros((8, 4), np.int64)
        centroid = np.zeros((8, 2))
        for j in range(8):
            ys, xs = np.nonzero(inst == j + 1)
            bbox[j] = (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
            centroid[j] = (xs.mean(), ys.mean())
        Image.fromarray(rgb).save(root / ("Lizard_Images1" if k % 2 == 0 else "Lizard_Images2") / f"{name}.png")
        savemat(root / "Lizard_Labels" / "Labels" / f"{name}.mat",
                {"inst_map": inst, "id": ids, "class": classes, "bbox": bbox, "centroid": centroid})
        rows.append(f"{name},{source},{split}")
        types = np.where(inst > 0, classes[np.maximum(inst - 1, 0), 0], 0)
        out[name] = (rgb, inst, types.astype(np.int32))
    (root / "Lizard_Labels" / "info.csv").write_text("\n".join(rows) + "\n")
    return out


def aperio_xml(outlines, mpp: float = 0.2521) -> str:
    """Aperio ImageScope XML of ``outlines`` (lists of (x, y) vertices), one Region each, as MoNuSeg's files."""
    regions = []
    for k, pts in enumerate(outlines, start=1):
        vertices = "\n".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in pts)
        regions.append(f'<Region Id="{k}" Type="0" Zoom="1" Selected="0" ImageLocation="" ImageFocus="-1" '
                       f'Length="0" Area="0" LengthMicrons="0" AreaMicrons="0" Text="" NegativeROA="0" '
                       f'InputRegionId="0" Analyze="1" DisplayId="{k}">\n<Attributes/>\n<Vertices>\n{vertices}\n'
                       '</Vertices>\n</Region>')
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Annotations MicronsPerPixel="{mpp:f}">\n'
            '<Annotation Id="1" Name="" ReadOnly="0" NameReadOnly="0" LineColorReadOnly="0" Incremental="0" '
            'Type="4" LineColor="65280" Visible="1" Selected="1" MarkupImagePath="" MacroName="">\n'
            '<Attributes>\n<Attribute Name="Description" Id="0" Value=""/>\n</Attributes>\n<Regions>\n'
            '<RegionAttributeHeaders>\n<AttributeHeader Id="9999" Name="Region" ColumnWidth="-1"/>\n'
            '</RegionAttributeHeaders>\n' + "\n".join(regions) + '\n</Regions>\n<Plots/>\n</Annotation>\n'
            '</Annotations>\n')


def write_monuseg_release(root: Path, train=("TCGA-A7-A13E-01Z-00-DX1", "TCGA-B0-5711-01Z-00-DX1"),
                          test=("TCGA-2Z-A9J9-01A-01-TS1",), side: int = 1000):
    """``MoNuSeg 2018 Training Data/{Tissue Images,Annotations}`` and ``MoNuSegTestData`` with 1000x1000 RGB
    ``.tif`` images and Aperio XML outlines: two overlapping squares and a triangle per image. Returns
    {stem: (rgb, outlines)}."""
    import tifffile

    out = {}
    places = [(root / "MoNuSeg 2018 Training Data" / "Tissue Images", root / "MoNuSeg 2018 Training Data" /
               "Annotations", train), (root / "MoNuSegTestData", root / "MoNuSegTestData", test)]
    for k, (images, annotations, names) in enumerate(places):
        images.mkdir(parents=True, exist_ok=True)
        annotations.mkdir(parents=True, exist_ok=True)
        for j, name in enumerate(names):
            rgb = np.random.default_rng(10 * k + j).integers(0, 255, (side, side, 3), dtype=np.uint8)
            outlines = [[(100, 100), (140, 100), (140, 140), (100, 140)],      # x, y
                        [(130, 130), (170, 130), (170, 170), (130, 170)],      # overlaps the first
                        [(600.5, 700.2), (650.7, 760.1), (580.3, 790.9)]]
            tifffile.imwrite(images / f"{name}.tif", rgb, photometric="rgb")
            (annotations / f"{name}.xml").write_text(aperio_xml(outlines))
            out[name] = (rgb, outlines)
    return out
