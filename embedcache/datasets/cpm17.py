"""CPM-17 as HoVer-Net's authors distribute it: H&E images of four cancers with instance maps.

The release (Vu et al., 2019, "Methods for segmentation and classification
of digital microscopy tissue images"; hover_net's README links the
restructured copy) unzips to::

    cpm17/train/Images/image_00.png ...   RGB, 500x500 or 600x600
    cpm17/train/Labels/image_00.mat       inst_map (H, W): instance ids, 0 = background
    cpm17/test/Images/ ... test/Labels/

Checked against torch_em ``torch_em/data/datasets/histopathology/cpm.py``
(``f"{split}/Images"``, ``f"{split}/Labels"``, ``loadmat(path)["inst_map"]``,
only train and test) and hover_net's ``dataset.py`` (``__CPM17.load_ann``:
instance map only, no types). The splits are ``train`` and ``test``.
"""

from __future__ import annotations

from pathlib import Path

from embedcache.datasets.matlab import SplitFolderRelease, find_split_release
from embedcache.datasets.registry import Layout, register


class Cpm17Dataset(SplitFolderRelease):
    layout = "cpm17"
    protocol = "hovernet"
    split_dirs = ("train", "test")
    class_names = None


def _instances_only(mat: Path) -> bool:
    from scipy.io import whosmat

    try:
        names = {name for name, _, _ in whosmat(mat)}
    except Exception:
        return False
    return "inst_map" in names and "type_map" not in names


def find_cpm17(path: Path) -> Path | None:
    return find_split_release(path, Cpm17Dataset.split_dirs, _instances_only)


register(Layout(
    name="cpm17", title="CPM-17", find=find_cpm17, open=Cpm17Dataset,
    url="https://drive.google.com/drive/folders/1l55cv3DuY-f7-JotDN7N5nbNnjbLWchK (linked from hover_net)",
    licence="see the challenge's terms of use",
    point_at="cpm17/ as unzipped (train/ and test/), or one of them",
    note="instance maps only (no classes); splits train, test",
))
