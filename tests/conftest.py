"""Shared fixtures: real LFW data (skipped when absent) and bundled dlib models."""

from __future__ import annotations

from pathlib import Path

import pytest

from facerank.errors import DataError


@pytest.fixture(scope="session")
def lfw_root() -> Path:
    from facerank._util.paths import lfw_root as find

    try:
        return find()
    except DataError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def lfw_images(lfw_root: Path) -> list[Path]:
    """All 13,233 LFW images, sorted."""
    return sorted((lfw_root / "images").glob("*/*.jpg"))


def small_gallery(root: Path, lfw_root: Path, extractor, people: list[str]):  # noqa: ANN001, ANN201
    """A gallery in `root / "g"` of two images per person (copied under `root / "in"`), and
    each person's sixth image, held out as a probe: (StoredGallery, [held-out paths])."""
    import shutil

    from facerank.gallery import StoredGallery

    held_out = []
    for name in people:
        files = sorted((lfw_root / "images" / name).glob("*.jpg"))
        (root / "in" / name).mkdir(parents=True)
        for f in files[:2]:
            shutil.copy(f, root / "in" / name / f.name)
        held_out.append(files[5])
    g = StoredGallery.create(root / "g", extractor, load_grids=False)
    g.add_folder(root / "in", progress=False)
    return g, held_out


def sample_every(items: list, n: int) -> list:
    """n items spread evenly over a sorted list (deterministic)."""
    step = max(1, len(items) // n)
    return items[::step][:n]


@pytest.fixture(scope="session")
def backbone():
    from facerank.models.dlib_resnet import DlibResNet

    return DlibResNet.from_dat()


@pytest.fixture(scope="session")
def extractor(backbone, tmp_path_factory):
    """HOG, face nearest the centre, central-box fallback; a private cache per test session."""
    from facerank.face.detect import FaceDetector
    from facerank.face.features import FeatureExtractor

    det = FaceDetector(policy="center", fallback="center")
    return FeatureExtractor(backbone=backbone, detector=det,
                            cache=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A real standalone Milvus server on free ports (started once per session), or a skip
    that says why it cannot run here."""
    pytest.importorskip("pymilvus", reason="pymilvus not installed (the `scale` extra)")
    from tests.milvus_server import MilvusServer

    try:
        server = MilvusServer(tmp_path_factory.mktemp("milvus-server") / "data")
        server.start()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"no real Milvus server: {e} (install the `milvus-server` extra)")
    yield server
    server.kill()
