"""The `facerank` command line. Every expected failure prints one line and exits with code 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from facerank.cli.options import (
    Aligned,
    Backbone,
    Calibrate,
    CalibrateWith,
    Detector,
    Faces,
    Model,
    NoFace,
    describe_detection,
)
from facerank.errors import FacerankError, InputError

app = typer.Typer(
    name="facerank",
    help="Face identification beyond one cosine score: search, re-rank, explain.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)




@app.command()
def extract(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    out_path: Annotated[Path, typer.Option("--out", help="Output .npz file.")] = Path("feats.npz"),
    detector: Detector = "yunet",
    faces: Faces = "largest",
    no_face: NoFace = "none",
    model: Model = None,
    strict: Annotated[bool, typer.Option(help="Exit 2 if any file fails.")] = False,
    aligned: Aligned = "none",
    backbone: Backbone = "sface",
) -> None:
    """Extract face features (embedding, patch grids, landmarks) into one .npz file."""
    from facerank.face.features import make_extractor
    from facerank.face.imageio import expand_images

    files = expand_images(paths)
    if not files:
        raise InputError(f"no image files found in {', '.join(map(str, paths))}")
    fx = make_extractor(detector, faces, no_face, model, aligned=aligned, backbone=backbone)
    fs = fx.extract_paths(files, progress=True)
    for _path, msg in fs.failures:
        err.print(f"skipped: {msg}", markup=False, highlight=False)
    if len(fs) == 0:
        raise FacerankError(f"no face could be extracted from {len(files)} file(s); see above")
    if strict and fs.failures:
        raise FacerankError(f"{len(fs.failures)} of {len(files)} file(s) failed (--strict)")
    fs.save(out_path)
    out.print(f"wrote {len(fs)} face(s) to {out_path} ({len(fs.failures)} skipped)")
    found = {s: fs.det_sources.count(s) for s in sorted(set(fs.det_sources))}
    out.print("faces found by: " + ", ".join(f"{s} {n}" for s, n in found.items()),
              markup=False, highlight=False, soft_wrap=True)


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="First image.")],
    b: Annotated[Path, typer.Argument(help="Second image.")],
    detector: Detector = "yunet",
    faces: Faces = "largest",
    no_face: NoFace = "none",
    model: Model = None,
    calibrate: Calibrate = "none",
    calibrate_with: CalibrateWith = None,
    aligned: Aligned = "none",
    backbone: Backbone = "sface",
) -> None:
    """Compare two faces: cosine, dlib distance, and same/different at dlib's 0.6 rule
    (with --calibrate: the calibrated score and its verdict at LFW's FAR 1e-3 threshold)."""
    from facerank.api import Comparison
    from facerank.calibrate import factory as calibration
    from facerank.face.features import make_extractor

    fx = make_extractor(detector, faces, no_face, model, aligned=aligned, backbone=backbone)
    cal = calibration.build(calibrate, calibrate_with, fx.model_id)
    fa, fb = fx.extract_file(a), fx.extract_file(b)
    cmp = Comparison.of(fa, fb, backbone)
    table = Table(show_header=True)
    for col in ("image A", "image B", f"cosine ({backbone})"):
        table.add_column(col)
    row = [str(a), str(b), f"{cmp.cosine:.4f}"]
    if cmp.distance is not None:
        table.add_column("dlib distance")
        table.add_column(f"verdict (< {cmp.threshold:g})")
        row += [f"{cmp.distance:.4f}", cmp.decision]
    if cal is not None:
        score = float(cal.score_pairs(fa.embedding[None], fb.embedding[None])[0])
        said, thr = calibration.verdict(calibrate, score, calibrate_with is not None)
        table.add_column(f"{calibrate} score")
        table.add_column("verdict" + (f" (>= {thr:.4f}, FAR 1e-3)" if thr is not None else ""))
        row += [f"{score:.4f}", said]
    table.add_row(*row)
    out.print(table)
    for name, f in ((a, fa), (b, fb)):
        out.print(f"{name}: {describe_detection(f.det_source, f.det_score)}", markup=False,
                  highlight=False, soft_wrap=True)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("demo-out"),
    backbone: Backbone = "sface",
) -> None:
    """End-to-end demo on bundled LFW: enrol, search a cropped and a masked query with the
    backbone's default chain, explain."""
    from facerank.cli.demo import run_demo

    run_demo(console=out, out=out_dir, backbone=backbone)


def _register_optional_commands() -> None:
    """Commands that live in their own modules (added as they exist)."""
    import importlib

    for module in ("facerank.cli.eval", "facerank.cli.explain", "facerank.cli.gallery",
                   "facerank.cli.serve", "facerank.cli.train"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        mod.register(app)


_register_optional_commands()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turn facerank errors into one line and exit code 2."""
    import click

    try:
        rv = app(args=argv, prog_name="facerank", standalone_mode=False)
    except FacerankError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print("interrupted")
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
