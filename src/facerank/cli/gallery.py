"""`facerank gallery create|add|list|remove|rename|reextract` and `facerank search`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
    GalleryBackbone,
    Gate,
    Model,
    NoFace,
    ProbabilityWith,
    Ray,
    RayBatch,
    RayConcurrency,
    describe_detection,
    ray_extractor,
)
from facerank.errors import InputError

if TYPE_CHECKING:
    from facerank.face.features import FeatureExtractor, FeatureSet
    from facerank.gallery import AddReport, SearchResult, StoredGallery
    from facerank.rerank.base import Reranker

gallery_app = typer.Typer(help="A persistent gallery of enrolled faces (one folder).",
                          no_args_is_help=True)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

GalleryDir = Annotated[Path, typer.Argument(help="Gallery folder.")]


def register(app: typer.Typer) -> None:
    """Add the `gallery` sub-commands and `search` to the main app."""
    app.add_typer(gallery_app, name="gallery")
    app.command(name="search")(search_command)


def _extractor(detector: str, faces: str, no_face: str, model: Path | None,
               backbone: str = "sface") -> FeatureExtractor:
    from facerank.face.features import make_extractor

    return make_extractor(detector, faces, no_face, model, backbone=backbone)


def _open(folder: Path, backbone: str | None = None, **kw: Any) -> StoredGallery:
    """Open a gallery; with `backbone`, refuse one built with another backbone."""
    from facerank.gallery import StoredGallery
    from facerank.models.backbone import backbone_name, geometry

    g = StoredGallery.open(folder, **kw)
    if backbone is not None:
        geometry(backbone)  # validates the name
        built = backbone_name(g.meta().get("model_id", ""))
        if built != backbone:
            g.close()
            from facerank.errors import GalleryError

            raise GalleryError(f"gallery {folder} was built with the {built} backbone, not "
                               f"{backbone}; use --backbone {built}, or create a new gallery "
                               f"with --backbone {backbone}")
    return g


def _print_report(report: AddReport, verb: str) -> None:
    for _path, msg in report.failures:
        err.print(f"skipped: {msg}", markup=False, highlight=False)
    present = f"{report.already_present} already present, " if verb == "added" else ""
    out.print(f"{verb} {report.added} image(s) of {len(report.identities)} identit"
              f"{'y' if len(report.identities) == 1 else 'ies'} in {report.seconds:.1f} s; "
              f"{present}{report.skipped} skipped", markup=False, highlight=False)


@gallery_app.command("create")
def create_command(
    folder: GalleryDir,
    detector: Detector = "yunet",
    faces: Faces = "largest",
    no_face: NoFace = "none",
    model: Model = None,
    backbone: Backbone = "sface",
    index: Annotated[str, typer.Option(
        "--index", help="Stage-1 engine: flat (exact faiss), hnsw (approximate faiss) or milvus "
        "(embeddings in a Milvus collection; needs --milvus-uri).")] = "flat",
    milvus_uri: Annotated[str | None, typer.Option(
        "--milvus-uri", help="A milvus-lite file (faces.db) or a server (http://host:19530).")]
    = None,
    milvus_collection: Annotated[str | None, typer.Option(
        "--milvus-collection", help="Collection name (default facerank_faces).")] = None,
) -> None:
    """Create an empty gallery; the detector settings are stored and reused by `add`."""
    from facerank.gallery import StoredGallery

    g = StoredGallery.create(folder, _extractor(detector, faces, no_face, model, backbone),
                       index=index, milvus_uri=milvus_uri,  # type: ignore[arg-type]
                       milvus_collection=milvus_collection)
    out.print(f"created gallery {folder} ({g.extractor.model_id}, detector "
              f"{g.extractor.detector.config_id}, index {g.index.describe()})",
              markup=False, highlight=False)


@gallery_app.command("add")
def add_command(
    folder: GalleryDir,
    images: Annotated[list[Path], typer.Argument(help="Image folders or files.")],
    identity_from: Annotated[str, typer.Option(
        "--identity-from", help="folder (parent folder name) or filename (stem minus _0001).")]
    = "folder",
    identity: Annotated[str | None, typer.Option(
        "--identity", help="Enrol every image under this one name instead.")] = None,
    unlabelled: Annotated[bool, typer.Option(
        "--unlabelled", help="Enrol the images without a name (for `gallery cluster` to group "
        "into people); faces under a folder named unknown or unlabelled count as unlabelled "
        "too.")] = False,
    aligned: Aligned = "none",
    min_confidence: Annotated[float | None, typer.Option(
        "--min-confidence", help="Refuse faces whose URL confidence is below this (1.0 = a "
        "typical clean LFW face).")] = None,
    backbone: GalleryBackbone = None,
    ray: Ray = None,
    ray_batch_size: RayBatch = 32,
    ray_concurrency: RayConcurrency = None,
) -> None:
    """Enrol images (resumable: files already in the gallery are skipped)."""
    from facerank.face.imageio import expand_images
    from facerank.gallery import UNLABELLED, identity_of

    if identity_from not in ("folder", "filename"):
        raise InputError(f"--identity-from {identity_from!r}: use folder or filename")
    if unlabelled:
        if identity:
            raise InputError("--unlabelled and --identity exclude each other: give one")
        identity = UNLABELLED
    files = expand_images(images)
    if not files:
        raise InputError(f"no image files found in {', '.join(map(str, images))}")
    names = [identity or identity_of(f, identity_from) for f in files]  # type: ignore[arg-type]
    g = _open(folder, backbone)
    if aligned != "none":
        from facerank.face.align.prealigned import check_aligned

        g.extractor.aligned = check_aligned(aligned)
    refuse = None
    if min_confidence is not None:
        from facerank.uncertainty.confidence import refuse_below

        refuse = refuse_below(min_confidence, g.extractor.model_id)
    try:
        extract = ray_extractor(ray, g.extractor, ray_batch_size, ray_concurrency)
        report = g.add_files(files, names, progress=True, extract=extract, refuse=refuse)
    except KeyboardInterrupt:
        err.print(f"interrupted; the gallery keeps {len(g)} image(s) committed so far. Run the "
                  "same command again to resume.", markup=False, highlight=False)
        raise
    _print_report(report, "added")
    if min_confidence is not None:
        out.print(f"{report.refused} face(s) refused below --min-confidence {min_confidence:g}",
                  markup=False, highlight=False)
    out.print(f"gallery {folder}: {len(g)} image(s), {len(g.identities())} identities",
              markup=False, highlight=False)


@gallery_app.command("list")
def list_command(
    folder: GalleryDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
    = False,
) -> None:
    """List the identities and how many images each has."""
    g = _open(folder)
    ids = g.identities()
    meta = g.meta()
    if as_json:
        sys.stdout.write(json.dumps({
            "gallery": str(folder), "images": len(g), "model_id": meta.get("model_id"),
            "identities": [{"name": n, "images": k} for n, k in ids]}, indent=2) + "\n")
        return
    table = Table(title=f"gallery {folder} ({meta.get('model_id')})",
                  caption=f"{len(g)} image(s), {len(ids)} identities")
    table.add_column("identity", overflow="fold")
    table.add_column("images", justify="right")
    for name, n in ids:
        table.add_row(name, str(n))
    out.print(table)


@gallery_app.command("remove")
def remove_command(
    folder: GalleryDir,
    identity: Annotated[str, typer.Argument(help="Identity to remove (with all its images).")],
) -> None:
    """Remove an identity and its images."""
    n = _open(folder).remove_identity(identity)
    out.print(f"removed {identity} ({n} image(s))", markup=False, highlight=False)


@gallery_app.command("rename")
def rename_command(
    folder: GalleryDir,
    old: Annotated[str, typer.Argument(help="Current name.")],
    new: Annotated[str, typer.Argument(help="New name.")],
    merge: Annotated[bool, typer.Option(help="If NEW exists, move OLD's images into it.")]
    = False,
) -> None:
    """Rename an identity."""
    _open(folder).rename_identity(old, new, merge=merge)
    out.print(f"renamed {old} -> {new}", markup=False, highlight=False)


@gallery_app.command("reextract")
def reextract_command(
    folder: GalleryDir,
    detector: Annotated[str | None, typer.Option(
        "--detector", help="New detector (default: the stored one).")] = None,
    faces: Annotated[str | None, typer.Option("--faces", help="New face policy.")] = None,
    no_face: Annotated[str | None, typer.Option("--no-face", help="New fallback.")] = None,
    model: Model = None,
    drop_failed: Annotated[bool, typer.Option(
        help="Remove images that cannot be re-extracted instead of failing.")] = False,
    backbone: GalleryBackbone = None,
) -> None:
    """Recompute all features with the current model (atomic: all or nothing)."""
    from facerank.models.backbone import backbone_name

    with _open(folder, check_model=False) as old:
        det = json.loads(old.meta()["detector"])
        built = backbone_name(old.meta().get("model_id", ""))
    fx = _extractor(detector or det["method"], faces or det["policy"],
                    no_face or det["fallback"], model, backbone or built)
    report = _open(folder, extractor=fx, check_model=False).reextract(
        progress=True, drop_failed=drop_failed)
    _print_report(report, "re-extracted")


# ---- search -------------------------------------------------------------------------------


def search_command(
    probe: Annotated[Path, typer.Argument(help="Probe image.")],
    gallery: Annotated[Path, typer.Option("--gallery", help="Gallery folder.")],
    stage2: Annotated[str, typer.Option(
        help="Stage-2 re-ranker: emd, vit, vit-fast, vit+emd, none, or auto (the gallery "
        "backbone's default: gated emd on dlib, none on sface).")] = "auto",
    top: Annotated[int, typer.Option(help="Results to show.")] = 10,
    grid: Annotated[str | None, typer.Option(help="Stage-2 patch grid (l2, l1, l2p4 ...).")]
    = None,
    weighting: Annotated[str | None, typer.Option(
        help="Stage-2 patch weighting (uniform, apc, cc, sc, lmk).")] = None,
    alpha: Annotated[float | None, typer.Option(
        help="Final = alpha*Stage-2 + (1-alpha)*cosine.")] = None,
    k: Annotated[int | None, typer.Option("--k", help="Stage-1 candidates re-ranked.")] = None,
    gate: Gate = "auto",
    faces: Annotated[str | None, typer.Option(
        "--faces", help="Probe with several faces: largest, center or strict (default: the "
        "gallery's).")] = None,
    aligned: Aligned = "none",
    explain: Annotated[Path | None, typer.Option(
        "--explain", help="Write a PNG explaining the top match.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
    calibrate: Calibrate = "auto",
    calibrate_with: CalibrateWith = None,
    backbone: GalleryBackbone = None,
    probability_with: ProbabilityWith = None,
) -> None:
    """Search a gallery for a probe face: Stage-1 cosine (optionally calibrated), then
    Stage-2 re-ranking; each match's probability describes the pair (its Stage-1 score)."""
    from facerank.face.detect import probe_label
    from facerank.face.features import FeatureSet
    from facerank.rerank.base import make_stage2

    if top < 1:
        raise InputError(f"--top must be >= 1, got {top}")
    g = _open(gallery, backbone)
    from facerank.models.backbone import backbone_name

    built = backbone_name(g.meta().get("model_id", ""))
    options = {"grid": grid, "weighting": weighting, "alpha": alpha, "k": k, "gate": gate,
               "backbone": built if built != "dlib" else None}  # Stage 2 on this backbone
    reranker = make_stage2(stage2, **{n: v for n, v in options.items() if v is not None})
    fx = g.extractor
    from facerank.cli.options import landmarks68_for

    lmk = landmarks68_for(weighting)
    if lmk or (faces is not None and faces != fx.detector.policy):
        from facerank.face.detect import FaceDetector
        from facerank.face.features import FeatureExtractor

        d = fx.detector
        det = FaceDetector(method=d.method, policy=faces or d.policy,  # type: ignore[arg-type]
                           fallback=d.fallback, upsample=d.upsample, align5=d.align5,
                           landmarks68=lmk)
        fx = FeatureExtractor(backbone=fx.backbone, grids=fx.grid_names, detector=det)
    from facerank.calibrate import factory

    cal = factory.build(calibrate, calibrate_with, fx.model_id)
    prob_model = factory.probability_model(calibrate, backbone_name(fx.model_id),
                                           probability_with)
    if aligned != "none":
        from facerank.face.align.prealigned import check_aligned

        fx.aligned = check_aligned(aligned)
    probe_fs = FeatureSet.stack([fx.extract_file(probe)])
    results = g.search(probe_fs, k=top, stage2=reranker, calibrate=cal)
    cohort = g.cohort_used(cal)
    if cohort is not None and cohort["note"]:
        err.print(f"note: {cohort['note']}", markup=False, highlight=False)
    from facerank.uncertainty.confidence import attach_results

    probe_conf, results = attach_results(g, probe_fs, results)
    feats = g.features()  # one snapshot for the probabilities and the verdict
    results = factory.attach_probability(results, prob_model, probe_fs, feats)
    verdict = factory.top1_verdict(results, prob_model, probe_fs, feats)
    explained = None
    if explain is not None and results:
        cand = g.features(grids=True).take([results[0].row])
        explained = _explain(probe_fs, cand, explain, reranker,
                             (probe_label(probe.name, probe_fs.det_sources[0],
                                          probe_fs.det_scores[0]),
                              f"{results[0].identity}: {Path(results[0].path).name}"),
                             fx.backbone)
    if as_json:
        sys.stdout.write(json.dumps({
            "probe": str(probe), "gallery": str(gallery),
            "probe_detection": {"source": probe_fs.det_sources[0],
                                "score": float(probe_fs.det_scores[0]),
                                "fallback": probe_fs.det_sources[0].startswith("fallback")},
            "stage2": reranker.describe() if reranker is not None else "none",
            "calibrate": (used.describe() if (used := g.calibration_used(cal)) is not None
                          else "none"),
            "cohort": cohort,
            "match_probability": factory.describe_probability(prob_model, results),
            "top1_verdict_far_1e-3": verdict,
            "explanation": str(explained) if explained else None,
            "probe_confidence": probe_conf,
            "results": [r.to_dict() for r in results]}, indent=2) + "\n")
        return
    _print_results(probe, results, reranker)
    if verdict is not None:
        out.print(f"top-1 {results[0].identity}: {verdict} at FAR 1e-3 (strict: the best of "
                  "the gallery's candidates)", markup=False, highlight=False)
    out.print(f"probe face: {describe_detection(probe_fs.det_sources[0], probe_fs.det_scores[0])}",
              markup=False, highlight=False)
    if probe_conf is not None:
        out.print(f"probe URL confidence {probe_conf['confidence']:.2f} (1.0 = a typical clean "
                  "LFW face)", markup=False, highlight=False)
    if explained is not None:
        out.print(f"wrote explanation of the top match to {explained}", markup=False,
                  highlight=False)


def _print_results(probe: Path, results: list[SearchResult], reranker: Reranker | None) -> None:
    from facerank.calibrate.probability import format_probability

    names = [n for n in (results[0].stage_scores if results else {}) if n != "stage1"]
    title = f"{probe.name}: {reranker.describe() if reranker else 'Stage 1 only'}"
    table = Table(title=title)
    table.add_column("rank", justify="right")
    table.add_column("identity", overflow="fold")
    table.add_column("file", overflow="fold")
    table.add_column("final score", justify="right")
    table.add_column("Stage-1 cosine", justify="right")
    for n in names:
        table.add_column(n if n == "calibrated" else f"Stage-2 {n}", justify="right")
    if results and results[0].probability is not None:
        from facerank.calibrate.probability import SCALE

        table.add_column(SCALE, justify="right")
    table.add_column("URL conf.", justify="right")

    def fmt(x: float) -> str:
        return "-" if x != x else f"{x:.4f}"  # NaN: not re-ranked

    has_prob = bool(results) and results[0].probability is not None
    for r in results:
        table.add_row(str(r.rank), r.identity, Path(r.path).name, fmt(r.score), fmt(r.stage1),
                      *(fmt(r.stage_scores[n]) for n in names),
                      *((format_probability(r.probability),) if has_prob else ()),
                      "-" if r.confidence is None else f"{r.confidence:.2f}")
    out.print(table)


def _explain(probe: FeatureSet, cand: FeatureSet, out_path: Path, reranker: Reranker | None,
             labels: tuple[str, str], backbone: Any = None) -> Path | None:
    """Render the flow explanation of the top match, if the explain module is installed."""
    try:
        from facerank.explain.flow import render_pair
    except ImportError as e:
        err.print(f"explanations are unavailable ({e}); no {out_path} written", markup=False,
                  highlight=False)
        return None
    emd = {"emd": reranker, "vit+emd": getattr(reranker, "emd", None)}.get(
        getattr(reranker, "name", None))  # the EMD whose flows are drawn (else the default)
    path, _ = render_pair(probe, cand, out_path, emd, labels=labels,  # type: ignore[arg-type]
                          backbone=backbone)
    return Path(path)
