"""The package can be depended on: typed (py.typed shipped) and each public module names its
public API in `__all__`, every name of which exists."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

import facerank

PUBLIC = ["facerank", "facerank.api", "facerank.errors", "facerank.face.imageio",
          "facerank.face.detect", "facerank.face.features", "facerank.face.align.dlib_chip",
          "facerank.face.align.arcface", "facerank.face.align.prealigned", "facerank.gallery",
          "facerank.gallery.core", "facerank.gallery.store", "facerank.gallery.index",
          "facerank.ranking", "facerank.rerank.base", "facerank.rerank.gate",
          "facerank.calibrate.base", "facerank.calibrate.factory"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_module_all(name: str) -> None:
    mod = importlib.import_module(name)
    assert mod.__all__ and len(set(mod.__all__)) == len(mod.__all__)
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"


def test_py_typed_shipped() -> None:
    assert (Path(facerank.__file__).parent / "py.typed").is_file()
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in meta["tool"]["setuptools"]["package-data"]["facerank"]


def test_dependencies_are_ranges_and_constraints_pin_them() -> None:
    """pyproject states ranges (no exact pins, no Python upper bound); constraints.txt pins
    every runtime dependency to one exact version for `make`."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["requires-python"] == ">=3.11"
    deps = meta["dependencies"] + [d for ds in meta["optional-dependencies"].values() for d in ds]
    assert not [d for d in deps if "==" in d], deps
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    for d in meta["dependencies"]:
        name = d.split(">")[0].split("[")[0].split("<")[0].strip().lower().replace("_", "-")
        assert name in pins and pins[name], f"{name} is not pinned in constraints.txt"
