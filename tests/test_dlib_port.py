"""The `.dat` reader and the PyTorch port against dlib-bin itself, on real LFW chips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facerank._util.paths import DLIB_RESNET, DLIB_SHAPE5, bundled_model
from facerank.errors import ModelFileError
from facerank.models.dlib_dat import Conv, Linear, read_dlib_resnet
from facerank.models.dlib_resnet import DlibResNet
from tests.conftest import sample_every

dlib = pytest.importorskip("dlib")


def test_reader_reads_the_whole_network() -> None:
    net = read_dlib_resnet(bundled_model(DLIB_RESNET))
    assert net.num_params == 5_614_592  # DESIGN.md §2
    assert net.input_size == 150
    assert np.allclose(net.input_mean, (122.782, 117.001, 104.298), atol=1e-3)
    convs = [la for la in net.layers if isinstance(la, Conv)]
    assert len(convs) == 29 and convs[0].weight.shape == (32, 3, 7, 7)
    fc = [la for la in net.layers if isinstance(la, Linear)]
    assert fc[0].weight.shape == (256, 128)


def test_grid_shapes(backbone: DlibResNet) -> None:
    chips = np.random.default_rng(0).integers(0, 255, (2, 150, 150, 3), dtype=np.uint8)
    desc, grids = backbone.embed_chips(chips, grids=("l4", "l3", "l2", "l1", "l0"))
    assert desc.shape == (2, 128)
    assert grids["l2"].shape == (2, 128, 8, 8)
    assert grids["l1"].shape == (2, 256, 4, 4)
    assert grids["l0"].shape == (2, 256, 2, 2)
    assert grids["l3"].shape == (2, 64, 17, 17)


@pytest.fixture(scope="module")
def dlib_chips(lfw_images: list[Path]) -> np.ndarray:
    """dlib's own chips for 240 LFW images spread over the whole set."""
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(bundled_model(DLIB_SHAPE5)))
    chips = []
    for f in sample_every(lfw_images, 240):
        img = dlib.load_rgb_image(str(f))
        dets = det(img, 1)
        if dets:
            chips.append(dlib.get_face_chip(img, sp(img, dets[0]), 150, 0.25))
    return np.stack(chips)


def test_port_equals_dlib_descriptor(dlib_chips: np.ndarray, backbone: DlibResNet) -> None:
    assert len(dlib_chips) >= 200
    fr = dlib.face_recognition_model_v1(str(bundled_model(DLIB_RESNET)))
    ref = np.stack([np.asarray(fr.compute_face_descriptor(c)) for c in dlib_chips])
    ours, _ = backbone.embed_chips(dlib_chips)
    diff = np.abs(ref - ours).max()
    assert diff < 1e-4, f"max abs difference {diff}"


# ---- damaged model files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def dat_bytes() -> bytes:
    return bundled_model(DLIB_RESNET).read_bytes()


def test_truncated_dat(tmp_path: Path, dat_bytes: bytes) -> None:
    bad = tmp_path / "truncated.dat"
    bad.write_bytes(dat_bytes[: len(dat_bytes) // 2])
    with pytest.raises(ModelFileError, match=r"truncated\.dat.*truncated"):
        read_dlib_resnet(bad)


@pytest.mark.parametrize("offset", [0, 5, 30])  # loss version, its name, fc version
def test_flipped_header_byte(tmp_path: Path, dat_bytes: bytes, offset: int) -> None:
    data = bytearray(dat_bytes)
    data[offset] ^= 0xFF
    bad = tmp_path / "flipped.dat"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"flipped\.dat.*byte"):
        read_dlib_resnet(bad)


def test_flipped_byte_in_layer_record(tmp_path: Path, dat_bytes: bytes) -> None:
    # corrupt the name of the last layer record ("fc_2" near the end of the file)
    i = dat_bytes.rfind(b"fc_2")
    data = bytearray(dat_bytes)
    data[i + 1] ^= 0x01
    bad = tmp_path / "layer.dat"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="layer record"):
        read_dlib_resnet(bad)


def test_wrong_file(tmp_path: Path) -> None:
    shape = bundled_model(DLIB_SHAPE5)  # a dlib file, but not a DNN
    with pytest.raises(ModelFileError, match="not a valid dlib face-recognition ResNet"):
        read_dlib_resnet(shape)
    with pytest.raises(ModelFileError, match="not found"):
        read_dlib_resnet(tmp_path / "missing.dat")
