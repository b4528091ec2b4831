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
Backbone = Annotated[str, typer.Option(
    "--backbone", help="Descriptor network: dlib (ResNet, 150 chip) or sface (SFace ONNX, "
    "ArcFace 112 crop). Galleries and caches remember theirs.")]
GalleryBackbone = Annotated[str | None, typer.Option(
    "--backbone", help="dlib or sface; default: the gallery's own. A gallery built with "
    "another backbone is refused.")]
