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
    method: Annotated[str, typer.Option(help="emd (flows) or vit (Face-ViT relevance "
                                        "heatmaps).")] = "emd",
    checkpoint: Annotated[Path | None, typer.Option(help="Face-ViT checkpoint (--method vit; "
                                                    "default: the one bundled for the "
                                                    "backbone).")] = None,
) -> None:
    """Explain why two faces match: EMD flows and patch weights, or Face-ViT heatmaps."""
    if method == "vit":
        _explain_vit(a, b, out_path, faces, checkpoint)
        return
    if method != "emd":
        from facerank.errors import InputError

        raise InputError(f"unknown explanation method {method!r}; choose emd or vit")
    from rich.console import Console

    from facerank.cli.options import landmarks68_for
    from facerank.explain.flow import render_pair
    from facerank.face.detect import probe_label
    from facerank.face.features import FeatureSet, make_extractor
    from facerank.rerank.emd.reranker import Stage2EMD

    fx = make_extractor(faces=faces, landmarks68=landmarks68_for(weighting))
    fx.grid_names = tuple(dict.fromkeys((*fx.grid_names, grid[:2])))
    fa, fb = fx.extract_file(a), fx.extract_file(b)
    reranker = Stage2EMD(grid=grid, weighting=weighting, alpha=alpha,
                         fc_weight=fx.backbone.fc_weight.detach())
    path, flows = render_pair(FeatureSet.stack([fa]), FeatureSet.stack([fb]), out_path, reranker,
                              labels=(probe_label(a.name, fa.det_source, fa.det_score),
                                      probe_label(b.name, fb.det_source, fb.det_score)))
    Console().print(f"cosine {flows.cosine[0]:.4f}  EMD {flows.emd[0]:.4f}  final "
                    f"{flows.final[0]:.4f}  ->  wrote {path}")


def _explain_vit(a: Path, b: Path, out_path: Path, faces: str, checkpoint: Path | None) -> None:
    """`--method vit`: Chefer et al. relevance of both faces' patches for the ViT score."""
    from rich.console import Console

    from facerank.explain.vit_heatmap import render_vit_pair
    from facerank.face.features import FeatureSet, make_extractor
    from facerank.rerank.vit.reranker import Stage2ViT, default_checkpoint

    fx = make_extractor(faces=faces)
    scorer = Stage2ViT.load(checkpoint or default_checkpoint(fx.model_id), backbone=fx.model_id)
    fx.grid_names = tuple(dict.fromkeys((*fx.grid_names, scorer.grid_name)))
    fa, fb = fx.extract_file(a), fx.extract_file(b)
    path, heat = render_vit_pair(FeatureSet.stack([fa]), FeatureSet.stack([fb]), out_path,
                                 scorer, labels=(a.name, b.name))
    Console().print(f"cosine {heat.cosine[0]:.4f}  ViT {heat.score[0]:.4f}  final "
                    f"{heat.final[0]:.4f}  ->  wrote {path}")
