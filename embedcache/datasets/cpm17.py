"""CPM-17 as HoVer-Net's authors distribute it: H&E images of four cancers with instance maps.

The release (Vu et al., 2019, "Methods for segmentation and classification
of digital microscopy tissue images"; hover_net's README links the
restructured copy) unzips to::

    cpm17/train/Images/image_00.png ...   RGB, 500x500 or 600x600
    cpm17/train/Labels/image_00.mat       inst_map (H, W): instance ids, 0 = background
    cpm17/test/Images/ ... test/Labels/

Sources of each fact: torch_em ``torch_em/data/datasets/histopathology/cpm.py``
(the Google Drive folder hover_net's README links, the restructuring its
authors describe in hover_net issue 5, ``f"{split}/Images"`` ``*.png``,
``f"{split}/Labels"`` ``*.mat``, ``loadmat(path)["inst_map"]``, "Explicit val
split does not exist for cpm17": only train and test); vqdang/hover_net
``dataset.py`` (``__CPM17.load_ann``: ``inst_map`` only, ``astype("int32")``,
no types) and ``README.md`` (no classification labels for CPM17).

hover_net issue 293 names the images ``image_00`` .. ``image_07`` (eight per
cancer type); issue 262 gives 32 test images. Issue 5 first described the
labels as the organisers' CSV vectors; the copy torch_em reads holds ``.mat``
files, which is what is read here.

Not confirmed by a source read: the image sizes (500x500 or 600x600), the
``.mat`` dtype (any numeric type is read), and a resolution: the challenge mixes 20x and 40x images, so none is
recorded (``--mpp``/``mpp.csv`` give it). The splits are ``train`` and ``test``.
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
