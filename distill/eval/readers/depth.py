"""Depth datasets: NYU Depth v2 in its two common layouts, and the built-in scenes' exact depth maps.

`nyu:PATH` reads either
- the official labeled set (Silberman et al., ECCV 2012): PATH is `nyu_depth_v2_labeled.mat` or a directory
  holding it, a MATLAB v7.3 (HDF5) file with `images` (1449, 3, 640, 480) uint8 and `depths` (1449, 640, 480)
  float32 metres (MATLAB's column-major arrays seen row-major: width before height), and beside it the
  official `splits.mat` (`trainNdxs`, 795 images; `testNdxs`, 654 images: the Eigen split; 1-based);
- the image / depth-PNG layout of the BTS and Monocular-Depth-Estimation-Toolbox loaders (the one DINOv2 uses):
  PATH/nyu_train.txt and PATH/nyu_test.txt, one sample per line, `RGB_PATH DEPTH_PATH [FOCAL]` relative to
  PATH (a leading `/` is allowed), depth a 16-bit single-channel PNG in millimetres, 0 = no measurement.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from distill.data.scenes import SceneDataset
from distill.eval.readers.base import ProbeProtocol, open_image, require
from distill.eval.readers.scenes import parse_options, scene_probe, scene_split, scenes_name
from common.errors import UserError

LABELED = "nyu_depth_v2_labeled.mat"
SPLIT_LISTS = {"train": "nyu_train.txt", "val": "nyu_test.txt"}
_MAT_SPLITS = {"train": "trainNdxs", "val": "testNdxs"}
_DEPTH_PNG_MODES = ("I;16", "I;16B", "I")


@dataclass
class DepthSample:
    name: str
    image: Image.Image  # RGB
    depth: np.ndarray  # (H, W) float32 metres; 0 where there is no measurement


class DepthDataset(torch.utils.data.Dataset):
    """A split with metric depth. Depths outside (min_depth, max_depth) are not scored and predictions are
    clipped to that range; `eigen_crop`: score only the Eigen et al. (NIPS 2014) crop of NYUv2."""

    name: str
    min_depth: float = 1e-3
    max_depth: float = 10.0
    eigen_crop: bool = False
    probe: ProbeProtocol = ProbeProtocol(size=480)  # NYUv2's native short side
    bins: int = 256  # uniform depth bins of both heads (DINOv2's linear head, Tipsv2DptConfig's default)
    dpt_width: int = 256  # the DPT head's fusion width (transformers' Tipsv2DptConfig default)

    def __getitem__(self, index: int) -> DepthSample:
        raise NotImplementedError


def optional_module(name: str, purpose: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f'{purpose} needs the {name} package, which is not installed; expected '
                        f'pip install "tipsdistill[nyu]"') from None


class NyuLabeled(DepthDataset):
    eigen_crop = True

    def __init__(self, mat: Path, split: str):
        self.path, self.name = mat, f"nyu:{mat}"
        with self._open() as f:
            missing = [key for key in ("images", "depths") if key not in f]
            if missing:
                raise UserError(f"{mat} has no {missing[0]!r} dataset; expected the official {LABELED}")
            images, depths = f["images"].shape, f["depths"].shape
        if len(images) != 4 or images[1] != 3 or depths != (images[0], *images[2:]):
            raise UserError(f"{mat} holds images {images} and depths {depths}; expected (N, 3, W, H) and (N, W, H)")
        self.indices = _mat_split(mat.parent / "splits.mat", split, images[0])

    def _open(self):
        h5py = optional_module("h5py", f"reading {self.path.name}")  # not kept: a module does not pickle to workers
        try:
            return h5py.File(self.path, "r")
        except OSError as exc:
            raise UserError(f"{self.path} cannot be read as HDF5 ({str(exc).splitlines()[0]}); expected the "
                            f"MATLAB v7.3 {LABELED}") from None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> DepthSample:
        n = int(self.indices[index])
        with self._open() as f:  # opened per item: an h5py handle does not survive DataLoader workers' fork
            rgb, depth = f["images"][n], f["depths"][n]
        # (3, W, H) and (W, H) -> (H, W, 3) and (H, W)
        image = Image.fromarray(np.ascontiguousarray(rgb.transpose(2, 1, 0)))
        return DepthSample(f"{n + 1:04d}", image, np.ascontiguousarray(depth.T, dtype=np.float32))


def _mat_split(path: Path, split: str, count: int) -> np.ndarray:
    """0-based indices of the official splits.mat (MATLAB v5, hence scipy rather than h5py)."""
    loadmat = optional_module("scipy.io", f"reading {path.name}").loadmat
    try:
        indices = np.asarray(loadmat(require(path, "NYUv2 split file"))[_MAT_SPLITS[split]]).reshape(-1) - 1
    except (KeyError, ValueError, OSError) as exc:
        raise UserError(f"{path} has no readable {_MAT_SPLITS[split]} ({exc}); expected the official NYUv2 "
                        "splits.mat with trainNdxs and testNdxs") from None
    indices = indices.astype(np.int64)
    if not len(indices) or indices.min() < 0 or indices.max() >= count:
        raise UserError(f"{path} {_MAT_SPLITS[split]} lists images outside 1..{count}; expected 1-based indices "
                        f"into {LABELED}")
    return indices


class NyuFolder(DepthDataset):
    eigen_crop = True

    def __init__(self, root: Path, split: str):
        self.name = f"nyu:{root}"
        lists = require(root / SPLIT_LISTS[split], "split file")
        self.pairs = [_list_entry(root, line, lists) for line in lists.read_text().splitlines() if line.strip()]
        if not self.pairs:
            raise UserError(f"split file {lists} lists no images")
        for image_path, depth_path in self.pairs:
            with open_image(image_path, "image") as image, open_image(depth_path, "depth map") as depth:
                if image.size != depth.size:
                    raise UserError(f"depth map {depth_path} is {depth.size[0]}x{depth.size[1]} but its image "
                                    f"{image_path.name} is {image.size[0]}x{image.size[1]}; expected equal sizes")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> DepthSample:
        image_path, depth_path = self.pairs[index]
        with open_image(depth_path, "depth map") as png:
            if png.mode not in _DEPTH_PNG_MODES:
                raise UserError(f"depth map {depth_path} has mode {png.mode}; expected a 16-bit single-channel PNG "
                                "of millimetres")
            depth = np.asarray(png, dtype=np.float32) / 1000.0
        with open_image(image_path, "image") as image:
            rgb = image.convert("RGB")
        return DepthSample(f"{image_path.parent.name}_{image_path.stem}", rgb, depth)


def _list_entry(root: Path, line: str, lists: Path) -> tuple[Path, Path]:
    fields = line.split()
    if len(fields) < 2:
        raise UserError(f"split file {lists} has the line {line!r}; expected RGB_PATH DEPTH_PATH [FOCAL]")
    return require(root / fields[0].lstrip("/"), "image"), require(root / fields[1].lstrip("/"), "depth map")


class SceneDepth(DepthDataset):
    """The built-in scenes' exact depth (metres along the optical axis; every pixel measured)."""

    def __init__(self, length: int = 256, size: int = 64, seed: int = 0, split: str = "val",
                 eval_split: str = "heldout"):
        self.scenes = SceneDataset(scene_split(split, eval_split), size=size, length=length, seed=seed)
        self.name = scenes_name(length, size, seed, split, eval_split)
        self.probe = scene_probe(size)
        # The heads' cost on a CPU is in the per-pixel bin distributions: fewer bins (0.13 m each over the
        # scenes' 1.5-10 m) and a narrower DPT (the micro models are 96 wide) keep the scenes a matter of seconds.
        self.bins = 64
        self.dpt_width = 32

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> DepthSample:
        scene = self.scenes.scene(index)
        return DepthSample(self.scenes.item_name(index), scene.image, scene.depth)


_FORMS = (f"nyu:PATH (PATH: {LABELED} or a directory with it and splits.mat, or a directory with "
          f"{' and '.join(SPLIT_LISTS.values())}) or scenes[:length=N,size=S,seed=K,split=heldout|validation]")


def open_depth(spec: str, split: str = "val") -> DepthDataset:
    """The `val` split (NYUv2: the Eigen test split) or the `train` split of a depth dataset."""
    kind, _, rest = str(spec).partition(":")
    if kind == "scenes":
        return SceneDepth(**parse_options(rest), split=split)
    if kind != "nyu" or not rest:
        raise UserError(f"depth dataset {spec!r} is not understood; expected {_FORMS}")
    path = Path(rest).expanduser()
    if path.is_file():
        return NyuLabeled(path, split)
    if (path / LABELED).is_file():
        return NyuLabeled(path / LABELED, split)
    if any((path / name).is_file() for name in SPLIT_LISTS.values()):
        return NyuFolder(path, split)
    raise UserError(f"{path} holds no NYUv2 layout; expected {_FORMS}")
