"""Command-line options shared by several `facerank` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Detector = Annotated[str, typer.Option("--detector", help="hog (fast) or mmod (CNN).")]
Faces = Annotated[str, typer.Option("--faces", help="Several faces: largest, center or strict.")]
NoFace = Annotated[str, typer.Option(
    "--no-face", help="No face found: none (error / skip the file), whole (the image is a face "
    "crop), center (the central box).")]
Model = Annotated[Path | None, typer.Option(
    "--model", help="dlib ResNet .dat file (default: the bundled one).")]
Gate = Annotated[str, typer.Option(
    "--gate", help="Stage-2 quality gate: auto (the bundled gate for this grid and weighting, "
    "if one ships), none (re-rank every query), or a gate JSON file.")]
Ray = Annotated[str | None, typer.Option(
    "--ray", help="Extract on Ray Data: local (start a Ray on this machine), auto (join the "
    "running cluster) or ray://host:10001. Needs `pip install 'facerank[scale]'`.")]
RayBatch = Annotated[int, typer.Option("--ray-batch-size", help="Images per Ray batch.")]
RayConcurrency = Annotated[int | None, typer.Option(
    "--ray-concurrency", help="Extractor actors (default: one per CPU of the cluster).")]


def ray_extractor(address: str | None, fx, batch_size: int = 32,  # noqa: ANN001
                  concurrency: int | None = None):  # noqa: ANN201
    """A `facerank.scale.ray.RayExtract` for `--ray ADDRESS`, or None without the option."""
    if address is None:
        return None
    from facerank.scale.ray import RayExtract

    return RayExtract(fx, None if address == "local" else address, batch_size, concurrency)
