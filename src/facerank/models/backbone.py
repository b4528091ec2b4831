"""The descriptor networks facerank can run on, behind one small interface.

A backbone owns its input geometry: which 5 points of a `Detection` it aligns on, how it cuts
its chip from them, where the face box lies in that chip, and how it turns uint8 chips into
descriptors and named patch grids:

    dlib   dlib ResNet-29, 150x150 chip, dlib's 5-point template with padding 0.25
           grids l4 (32,35,35) l3 (64,17,17) l2 (128,8,8) l1 (256,4,4) l0 (256,2,2)
    sface  SFace (MobileFaceNet family), ArcFace 112x112 template from `Detection.points5`
           grids l4 (256,28,28) l3 (512,14,14) l2 (1024,7,7)

Grid names follow resolution order (l2 is the last map at ~8x8 or 7x7 for both), so Stage 2's
default `l2` and pooled names such as `l2p4` mean the same kind of map on either backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from facerank.errors import InputError
from facerank.face.detect import Detection

BACKBONES = ("dlib", "sface")


@dataclass(frozen=True)
class Geometry:
    """Input geometry of a backbone (no model needed to know it)."""

    name: str
    chip_size: int
    grids: tuple[str, ...]  # every grid it offers
    default_grids: tuple[str, ...]  # what the feature extractor keeps by default
    face_box: tuple[float, float, float, float] | None  # face box in chip pixels; None: the
    # central square of a chip with padding 0.25 (dlib's)


GEOMETRY = {
    "dlib": Geometry("dlib", 150, ("l4", "l3", "l2", "l1", "l0"), ("l2", "l1"), None),
    "sface": Geometry("sface", 112, ("l4", "l3", "l2"), ("l2",), None),
}


def geometry(name: str) -> Geometry:
    """The geometry of backbone `name`; InputError for an unknown name."""
    if name not in GEOMETRY:
        raise InputError(f"unknown backbone {name!r}; use {' or '.join(BACKBONES)}")
    if name == "sface" and GEOMETRY[name].face_box is None:
        from facerank.face.align.arcface import ARCFACE_FACE_BOX

        g = GEOMETRY[name]
        GEOMETRY[name] = Geometry(g.name, g.chip_size, g.grids, g.default_grids,
                                  ARCFACE_FACE_BOX)
    return GEOMETRY[name]


class Backbone(Protocol):
    """What the feature extractor, evaluator and Stage 2 need from a descriptor network."""

    name: str  # "dlib" | "sface"
    model_id: str  # recorded in caches, galleries, gates and checkpoints

    @property
    def geometry(self) -> Geometry: ...

    def points(self, detection: Detection) -> np.ndarray:
        """The (5, 2) image points this backbone aligns on."""
        ...

    def align_points(self, image: np.ndarray, points: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) image -> uint8 (S, S, 3) chip, from `points(detection)`."""
        ...

    def chip_transform(self, points: np.ndarray) -> np.ndarray:
        """2x3 affine chip (x, y) -> image (x, y) of the chip cut from `points`."""
        ...

    def embed_chips(self, chips: np.ndarray, batch_size: int = 64,
                    grids: tuple[str, ...] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """uint8 chips (N, S, S, 3) -> descriptors (N, D), grids {name: (N, C, H, W)}."""
        ...


def align(backbone: Backbone, image: np.ndarray, detection: Detection) -> np.ndarray:
    """The backbone's chip of a detected face."""
    return backbone.align_points(image, backbone.points(detection))


class SFaceBackbone:
    """SFace on ArcFace 112 crops from `Detection.points5` (see `facerank.models.sface`)."""

    name = "sface"

    def __init__(self, path: str | None = None, threads: int | None = None) -> None:
        from facerank.models.sface import SFace

        self.net = SFace(path, threads)
        self.model_id = self.net.model_id

    @property
    def geometry(self) -> Geometry:
        return geometry("sface")

    def points(self, detection: Detection) -> np.ndarray:
        if detection.points5 is None:
            raise InputError(f"{detection.source} detection has no 5 ArcFace points (needs the "
                             "68 landmarks or a detector that finds eyes, nose and mouth)")
        return np.asarray(detection.points5, dtype=np.float64)

    def align_points(self, image: np.ndarray, points: np.ndarray) -> np.ndarray:
        from facerank.face.align.arcface import arcface_chip

        return arcface_chip(image, points)

    def chip_transform(self, points: np.ndarray) -> np.ndarray:
        from facerank.face.align.arcface import arcface_chip_transform

        return arcface_chip_transform(points)

    def embed_chips(self, chips: np.ndarray, batch_size: int = 64,
                    grids: Sequence[str] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.net.embed_chips(chips, batch_size, tuple(grids))

    fc_weight = None  # the embedding head is position-dependent (flatten + Gemm): no CC


_LOADED: dict[str, Backbone] = {}


def make_backbone(name: str = "dlib", cached: bool = True) -> Backbone:
    """A loaded backbone by name ("dlib" or "sface"); one instance per process when cached."""
    geometry(name)  # validates the name
    if cached and name in _LOADED:
        return _LOADED[name]
    if name == "dlib":
        from facerank.models.dlib_resnet import DlibResNet

        bb: Backbone = DlibResNet.from_dat()
    else:
        bb = SFaceBackbone()
    if cached:
        _LOADED[name] = bb
    return bb


def backbone_name(model_id: str) -> str:
    """"dlib_resnet_v1@facerank-features-1" -> "dlib"; "sface_..." -> "sface"."""
    return "sface" if model_id.startswith("sface") else "dlib"
