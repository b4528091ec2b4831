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
    ProbabilityWith,
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
    probability_with: ProbabilityWith = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
) -> None:
    """Compare two faces: cosine, dlib distance and same/different at dlib's 0.6 rule, and
    the match probability P(same person) of the pair (from the cosine, or with --calibrate
    from the calibrated score) with its verdict at the LFW FAR 1e-3 threshold."""
    from facerank.api import Comparison, with_probability
    from facerank.calibrate.probability import SCALE, format_probability
    from facerank.face.features import make_extractor

    fx = make_extractor(detector, faces, no_face, model, aligned=aligned, backbone=backbone)
    fa, fb = fx.extract_file(a), fx.extract_file(b)
    cmp = with_probability(Comparison.of(fa, fb, backbone), fa, fb, fx.model_id, calibrate,
                           calibrate_with, probability_with)
    if as_json:
        import json
        import math
        import sys

        sys.stdout.write(json.dumps({
            "a": str(a), "b": str(b), "backbone": backbone, "model_id": fx.model_id,
            "cosine": cmp.cosine,
            "dlib_rule": None if cmp.distance is None else {
                "distance": cmp.distance, "threshold": cmp.threshold, "same": cmp.same},
            "calibrate": cmp.calibrator, "calibrated": cmp.calibrated,
            "match_probability": None if cmp.probability is None else {
                "scale": SCALE, "value": cmp.probability,
                "from": "cosine" if cmp.calibrated is None else f"{calibrate} score",
                "prior": "equal odds", "verdict_far_1e-3": cmp.verdict_far},
            "detections": [{"image": str(p), "source": f.det_source,
                            "score": float(f.det_score) if math.isfinite(f.det_score) else None}
                           for p, f in ((a, fa), (b, fb))],
        }, indent=2) + "\n")
        return
    table = Table(show_header=True)
    for col in ("image A", "image B", f"cosine ({backbone})"):
        table.add_column(col)
    row = [str(a), str(b), f"{cmp.cosine:.4f}"]
    if cmp.distance is not None:
        table.add_column("dlib distance")
        table.add_column(f"verdict (< {cmp.threshold:g})")
        row += [f"{cmp.distance:.4f}", cmp.decision]
    if cmp.calibrated is not None:
        table.add_column(f"{calibrate} score")
        row.append(f"{cmp.calibrated:.4f}")
    table.add_row(*row)
    out.print(table)
    if cmp.probability is not None:
        score = "cosine" if cmp.calibrated is None else f"{calibrate} score"
        out.print(f"{SCALE}: {format_probability(cmp.probability)} (from the {score}; equal "
                  "prior odds) "
                  f"-> {cmp.verdict_far} at FAR 1e-3", markup=False, highlight=False)
    for name, f in ((a, fa), (b, fb)):
        out.print(f"{name}: {describe_detection(f.det_source, f.det_score)}", markup=False,
                  highlight=False, soft_wrap=True)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("demo-out"),
    backbone: Backbone = "sface",
) -> None:
    """End-to-end demo on LFW: enrol, search a cropped and a masked query with the
    backbone's default chain, explain."""
    from facerank.cli.demo import run_demo

    run_demo(console=out, out=out_dir, backbone=backbone)


def _register_optional_commands() -> None:
    """Commands that live in their own modules (added as they exist)."""
    import importlib

    for module in ("facerank.cli.calibrate", "facerank.cli.cluster", "facerank.cli.eval",
                   "facerank.cli.explain", "facerank.cli.gallery", "facerank.cli.serve",
                   "facerank.cli.train"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        mod.register(app)


_register_optional_commands()


def _click_classes() -> tuple[tuple[type[BaseException], ...], ...]:
    """(exit, usage/click errors, abort) classes of typer's vendored click and of `click`.

    typer >= 0.29 raises its own `typer._click` exceptions; older typer raises `click`'s. Both
    are caught so that a usage error is one line plus a usage hint, never a traceback.
    """
    exits: list[type[BaseException]] = []
    errors: list[type[BaseException]] = []
    aborts: list[type[BaseException]] = [KeyboardInterrupt]
    try:
        import typer.exceptions as typer_exc
        from typer._click import exceptions as typer_click
    except ImportError:  # typer before its vendored click
        pass
    else:
        exits.append(typer_exc.Exit)
        errors.append(typer_click.ClickException)
        aborts.append(typer_exc.Abort)
    try:
        import click
    except ModuleNotFoundError:
        pass
    else:
        exits.append(click.exceptions.Exit)
        errors.append(click.ClickException)
        aborts.append(click.exceptions.Abort)
    return tuple(exits), tuple(errors), tuple(aborts)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turn facerank and usage errors into one line and exit code 2."""
    exits, errors, aborts = _click_classes()
    try:
        rv = app(args=argv, prog_name="facerank", standalone_mode=False)
    except FacerankError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except exits as e:
        return int(getattr(e, "exit_code", 0) or 0)
    except errors as e:
        e.show()  # type: ignore[attr-defined]
        return 2
    except aborts:
        err.print("interrupted")
        return 130
    except OSError as e:  # a path the user gave that cannot be read or written (full disk, ...)
        where = f"{e.filename}: " if e.filename else ""
        err.print(f"error: {where}{e.strerror or e}; check the path, its permissions and the "
                  "free space", markup=False, highlight=False, soft_wrap=True)
        return 2
    return rv if isinstance(rv, int) else 0

if __name__ == "__main__":
    sys.exit(main())
