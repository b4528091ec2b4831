"""`facerank explain A.jpg B.jpg --out flow.png`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the `explain` command to the main app."""
    app.command(name="explain")(explain_command)


def explain_command(
    a: Annotated[Path, typer.Argument(help="Query image.")],
    b: Annotated[Path, typer.Argument(help="Candidate image.")],
    out_path: Annotated[Path, typer.Option("--out", help="Output PNG.")] = Path("flow.png"),
    grid: Annotated[str, typer.Option(help="Patch grid: l2 (8x8), l1 (4x4), l2p4 ...")] = "l2",
    weighting: Annotated[str, typer.Option(help="uniform, apc, cc, sc or lmk.")] = "apc",
    alpha: Annotated[float, typer.Option(help="Final = alpha*EMD + (1-alpha)*cosine.")] = 0.7,
    faces: Annotated[str, typer.Option("--faces", help="largest, center or strict.")] = "largest",
) -> None:
    """Explain why two faces match: chips, patch weights and the strongest EMD flows."""
    from rich.console import Console

    from facerank.cli import make_extractor
    from facerank.cli_options import probe_label
    from facerank.explain.flow import render_pair
    from facerank.features import FeatureSet
    from facerank.rerank.emd_reranker import Stage2EMD

    fx = make_extractor(faces=faces)
    fx.grid_names = tuple(dict.fromkeys((*fx.grid_names, grid[:2])))
    fa, fb = fx.extract_file(a), fx.extract_file(b)
    reranker = Stage2EMD(grid=grid, weighting=weighting, alpha=alpha,
                         fc_weight=fx.backbone.fc_weight.detach())
    path, flows = render_pair(FeatureSet.stack([fa]), FeatureSet.stack([fb]), out_path, reranker,
                              labels=(probe_label(a.name, fa.det_source, fa.det_score),
                                      probe_label(b.name, fb.det_source, fb.det_score)))
    Console().print(f"cosine {flows.cosine[0]:.4f}  EMD {flows.emd[0]:.4f}  final "
                    f"{flows.final[0]:.4f}  ->  wrote {path}")
