"""`make demo`: the main job end to end on LFW.

1. Build (or reopen) a gallery of LFW — every image except two held-out queries — in
   `demo-out/gallery` (features cached after the first run, so a re-run takes seconds).
2. Make a cropped and a masked query from the held-out images (people who still have other
   images in the gallery), search each with Stage 1 and with the backbone's default chain
   (`facerank search`'s `--stage2 auto`: SFace's cosine with Stage 2 abstaining; on dlib,
   IDA-R calibrated Stage 1 then the shipped Stage 2, `STAGE2`), print the tables with each
   pair's match probability (from its Stage-1 score, calibrated where the backbone has bundled
   calibration, never Stage 2's blend), each face's URL confidence and the verdict at the
   FAR 1e-3 threshold.
3. Write the flow explanation of each top-1 match and print where it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from facerank.errors import GalleryError
from facerank.eval.occlusion import occlude
from facerank.eval.protocols import lfw_extractor
from facerank.eval.readers.lfw import load_lfw
from facerank.face.features import FeatureSet
from facerank.face.imageio import load_image, save_image
from facerank.gallery import StoredGallery
from facerank.rerank.base import make_stage2

BACKBONE = "sface"  # the default backbone (`--backbone dlib` elsewhere for dlib's chain)
STAGE2 = "vit+emd"  # dlib's shipped Stage 2 (docs/results.md, "Face-ViT Stage 2": what ships)

# Held-out queries (their originals are not enrolled). Picked from the LFW-crop / LFW-mask
# evaluation as cases Stage 2 fixes; docs/results.md has the averages over all 9,164 queries.
QUERIES = ("Andre_Agassi/Andre_Agassi_0008.jpg", "Amelie_Mauresmo/Amelie_Mauresmo_0015.jpg")


def _gallery(out: Path, paths: list[Path], names: list[str], console: Console,
             backbone: str = BACKBONE) -> StoredGallery:
    from facerank.cli.options import LANDMARKS68_NOTE

    folder = out / ("gallery" if backbone == "dlib" else f"gallery-{backbone}")
    console.print(LANDMARKS68_NOTE.format(why="the masked query (LFW evaluation set-up)"))
    fx = lfw_extractor(backbone=backbone)
    try:
        gallery = StoredGallery.open(folder, fx)
    except GalleryError:
        if folder.exists() and any(folder.iterdir()):
            raise
        gallery = StoredGallery.create(folder, fx)
    wanted = {str(p) for p in paths}
    for image in gallery.images():  # e.g. an older demo held out other queries
        if image["path"] not in wanted:
            gallery.remove_image(int(image["id"]))
    if len(gallery) < len(paths):
        console.print(f"enrolling {len(paths)} LFW images into {folder} (resumable; features "
                      "are cached, so later runs are quick)")
        report = gallery.add_files(paths, names, progress=True)
        console.print(f"added {report.added}, already present {report.already_present}, "
                      f"skipped {len(report.failures)}")
    return gallery


def _probe(fx, chip: np.ndarray, name: str) -> FeatureSet:  # noqa: ANN001
    """FeatureSet of an edited chip: the network on it, landmarks found again on it."""
    from facerank.face.quality import chip_sharpness

    desc, grids = fx.embed_chips(chip[None])
    lm = fx.detector.chip_landmarks68(chip[None])
    return FeatureSet(paths=[name], descriptors=desc, grids=grids,
                      landmarks5=np.full((1, 5, 2), np.nan), landmarks68=lm,
                      chip_landmarks68=lm, boxes=np.zeros((1, 4)), det_scores=np.zeros(1),
                      det_sources=["edited chip"], sharpness=chip_sharpness(chip))


def run_demo(console: Console | None = None, out: Path = Path("demo-out"),
             backbone: str = BACKBONE) -> None:
    """Enrol LFW, search a cropped and a masked query with `backbone`'s default chain, explain
    the top matches."""
    from facerank.explain.flow import render_pair

    console = console or Console()
    lfw = load_lfw()
    held = {lfw.root / "images" / q for q in QUERIES}
    paths = [p for p in lfw.paths if p not in held]
    names = [p.parent.name for p in paths]
    gallery = _gallery(out, paths, names, console, backbone)
    console.print(f"gallery: {len(gallery)} images of {len(gallery.identities())} people")
    fx = gallery.extractor
    from facerank.calibrate.factory import (
        attach_probability,
        build,
        probability_model,
        top1_verdict,
    )
    from facerank.calibrate.probability import SCALE, format_probability
    from facerank.rerank.emd.reranker import Stage2EMD
    from facerank.uncertainty.confidence import attach_results

    if backbone == "dlib":
        stage2 = make_stage2(STAGE2)  # gated by its bundled gate
        calibrator = "ida-r"
        cal = build(calibrator, None, fx.model_id)  # bundled anchors of LFW identity half A
        chain_name = f"IDA-R + {STAGE2}"
    else:  # SFace's default chain: Stage 2 abstains (`--stage2 auto`), `--calibrate auto`: cosine
        stage2 = make_stage2("auto", backbone=backbone)
        calibrator, cal = "none", None
        chain_name = "default chain (Stage 2 " + ("abstains" if stage2 is None else "on") + ")"
    prob = probability_model(calibrator, backbone)
    flows = getattr(stage2, "emd", stage2) or Stage2EMD(backbone=backbone)  # for the figure
    gfeats = gallery.features()
    for (query, kind) in zip(QUERIES, ("crop", "mask"), strict=True):
        path = lfw.root / "images" / query
        aligned = fx.align(load_image(path), str(path))
        # the same occlusion stream as the evaluator's query of this image (id = path in LFW)
        chip = occlude(kind, aligned.chip[None], aligned.chip_landmarks68[None], seed=0,
                       ids=[str(path.relative_to(lfw.root))])[0]
        stem = Path(query).stem
        query_png = out / f"{stem}_{kind}.png"
        save_image(query_png, chip)
        probe = _probe(fx, chip, str(query_png))
        first = gallery.search(probe, k=5)
        probe_conf, chain = attach_results(gallery, probe, gallery.search(
            probe, k=5, stage2=stage2, calibrate=cal))
        chain = attach_probability(chain, prob, probe, gfeats)
        table = Table(title=f"{kind} query of {path.parent.name} ({query_png})")
        for col in ("rank", "Stage 1 identity", "cosine", f"{chain_name} identity",
                    *(("IDA-R score",) if cal is not None else ()), SCALE, "URL conf."):
            table.add_column(col)
        for r1, r2 in zip(first, chain, strict=True):
            conf = "-" if r2.confidence is None else f"{r2.confidence:.2f}"
            calibrated = (f"{r2.stage_scores['calibrated']:.4f}",) if cal is not None else ()
            table.add_row(str(r1.rank), _mark(r1.identity, path.parent.name),
                          f"{r1.stage1:.3f}", _mark(r2.identity, path.parent.name),
                          *calibrated, format_probability(r2.probability), conf)
        console.print(table)
        top = chain[0]
        said = top1_verdict(chain, prob, probe, gfeats)  # strict: the best of many impostors
        line = f"top-1 {top.identity}: {SCALE} {format_probability(top.probability)}"
        line += "" if said is None else f" -> {said} at FAR 1e-3"
        if probe_conf is not None:
            line += f"; query URL confidence {probe_conf['confidence']:.2f}"
        console.print(line)
        explain = out / f"{stem}_{kind}_explained.png"
        cand = gfeats.take([int(top.row)])
        render_pair(probe, cand, explain, flows, query_chip=chip,
                    labels=(f"{kind} query", f"top-1: {top.identity}"), backbone=fx.backbone)
        console.print(f"explanation of the top-1 match: [bold]{explain.resolve()}[/]")


def _mark(identity: str, truth: str) -> str:
    return f"[green]{identity}[/]" if identity == truth else identity
