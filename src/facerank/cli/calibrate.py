"""`facerank calibrate anchors FOLDER --out anchors.npz`: a cohort from any identity folders.

FOLDER holds one sub-folder per person (the folder name is the identity), as `gallery add`
reads them. The anchors are one embedding per identity (the normalised mean of its faces),
usable with `--calibrate ida-r|asnorm --calibrate-with anchors.npz`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from facerank.cli.options import Backbone, Detector
from facerank.errors import InputError

out = Console(soft_wrap=True)
calibrate_app = typer.Typer(help="Build calibration data from your own photos.",
                            no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `calibrate` group to the main app."""
    app.add_typer(calibrate_app, name="calibrate")


@calibrate_app.command("anchors")
def anchors_command(
    folder: Annotated[Path, typer.Argument(help="Folder of identity folders.")],
    out_path: Annotated[Path, typer.Option("--out", help="Anchors file to write (.npz).")],
    backbone: Backbone = "dlib",
    detector: Detector = "yunet",
) -> None:
    """Anchors (one per identity) for IDA-R / AS-norm from a folder of identity folders."""
    import numpy as np

    from facerank.calibrate.cohort import check_anchor_file, identity_cohort
    from facerank.face.features import make_extractor
    from facerank.face.imageio import list_images

    if out_path.suffix != ".npz":
        raise InputError(f"--out {out_path}: anchors are written as .npz")
    files = list_images(folder)
    people = sorted({p.parent.name for p in files if p.parent != folder})
    if len(people) < 2:
        raise InputError(f"{folder}: {len(people)} identity folder(s) with images; anchors "
                         "need at least 2 (one sub-folder per person)")
    fx = make_extractor(detector, "largest", "none", backbone=backbone)
    fs = fx.extract_paths([p for p in files if p.parent != folder], description="anchors")
    labels = np.array([Path(p).parent.name for p in fs.paths])
    if len(np.unique(labels)) < 2:
        raise InputError(f"{folder}: faces found for {len(np.unique(labels))} identity; "
                         "anchors need at least 2")
    anchors = check_anchor_file(identity_cohort(fs.embeddings, labels, fx.model_id,
                                                folder=str(folder), images=len(fs)))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    anchors.save(out_path)
    out.print(f"wrote {len(anchors)} anchors ({fx.model_id}) from {len(fs)} faces to "
              f"{out_path} ({len(fs.failures)} file(s) skipped)", markup=False, highlight=False)
