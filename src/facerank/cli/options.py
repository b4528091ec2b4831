"""Command-line options shared by several `facerank` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Detector = Annotated[str, typer.Option(
    "--detector", help="yunet (default: fast, finds masked faces), hog (dlib, frontal) or mmod "
    "(dlib CNN, slow).")]
Faces = Annotated[str, typer.Option("--faces", help="Several faces: largest, center or strict.")]
NoFace = Annotated[str, typer.Option(
    "--no-face", help="No face found: none (error / skip the file), whole (the image is a face "
    "crop), center (the central box).")]
Model = Annotated[Path | None, typer.Option(
    "--model", help="dlib ResNet .dat file (default: the bundled one).")]
Gate = Annotated[str, typer.Option(
    "--gate", help="Stage-2 quality gate: auto (the bundled gate for this grid and weighting, "
    "if one ships), none (re-rank every query), or a gate JSON file.")]
Calibrate = Annotated[str, typer.Option(
    "--calibrate", help="Score calibration: auto (searches: IDA-R with the gallery's own "
    "cohort where it was measured to help - dlib, 400+ identities - else cosine; pairs: "
    "cosine), none (cosine), asnorm, ida-r (IDA; the gallery's own cohort from 200 identities, "
    "else the bundled LFW anchors of the backbone) or ida-l (IDA's learned regressor, no "
    "anchors); see facerank.calibrate.")]
CalibrateWith = Annotated[Path | None, typer.Option(
    "--calibrate-with", help="Anchors .npz (asnorm, ida-r) or IDA-L checkpoint .pt to use "
    "instead of the bundled one.")]
ProbabilityWith = Annotated[Path | None, typer.Option(
    "--probability-with", help="Match probability model JSON to use instead of the bundled "
    "one for this backbone and --calibrate (one made for another calibrator is refused).")]
Aligned = Annotated[str, typer.Option(
    "--aligned", help="Input already a face crop: dlib150 (a dlib chip), arcface112 (an "
    "insightface ArcFace crop), auto (150x150 / 112x112 taken as those), none (detect).")]


def describe_detection(source: str, score: float) -> str:
    """How the face was found, for CLI output: detector, or the fallback named as such."""
    if source.startswith("fallback-"):
        return f"no face detected: {source[9:]} box used (fallback)"
    if source.startswith("aligned-"):
        return f"pre-aligned crop ({source[8:]})"
    return f"{source} (score {score:.2f})"


Backbone = Annotated[str, typer.Option(
    "--backbone", help="Descriptor network: dlib (ResNet, 150 chip) or sface (SFace ONNX, "
    "ArcFace 112 crop). Galleries and caches remember theirs.")]
GalleryBackbone = Annotated[str | None, typer.Option(
    "--backbone", help="dlib or sface; default: the gallery's own. A gallery built with "
    "another backbone is refused.")]
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


LANDMARKS68_NOTE = ("loading dlib's 68-point landmark model (licensed for non-commercial use "
                    "only) for {why}")


def landmarks68_for(weighting: str | None) -> bool:
    """True, and one line on stderr saying so, when `weighting` ("lmk") needs dlib's 68-point
    model; every other weighting runs on the 5-point model alone."""
    if weighting != "lmk":
        return False
    typer.echo(LANDMARKS68_NOTE.format(why="the lmk weighting"), err=True)
    return True
