"""`facerank cluster PHOTOS --out DIR` and `facerank gallery cluster G`: group faces into people."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from facerank.cli.options import Backbone, Detector
from facerank.errors import InputError

out = Console(soft_wrap=True)

Merge = Annotated[list[str] | None, typer.Option(
    "--merge", help="A,B: cluster B joins cluster A (kept by later runs); repeatable.")]
Rename = Annotated[list[str] | None, typer.Option(
    "--rename", help="ID=NAME: name a cluster; repeatable.")]
NotThis = Annotated[list[str] | None, typer.Option(
    "--not-this", help="FACE@ID: this face (its key in clusters.json) is not cluster ID's "
    "person; it leaves and never rejoins; repeatable.")]


def register(app: typer.Typer) -> None:
    """Add `cluster` to the main app and `cluster` to the gallery group."""
    app.command(name="cluster")(cluster_command)
    from facerank.cli.gallery import gallery_app

    gallery_app.command("cluster")(gallery_cluster_command)


def _corrections(store: object, merge: list[str] | None, rename: list[str] | None,
                 not_this: list[str] | None) -> None:
    from facerank.clustering.store import ClusterStore

    assert isinstance(store, ClusterStore)
    try:
        for m in merge or []:
            a, b = (int(v) for v in m.split(","))
            store.merge(a, b)
        for r in rename or []:
            cid, name = r.split("=", 1)
            store.rename(int(cid), name)
        for n in not_this or []:
            face, cid = n.rsplit("@", 1)
            store.not_this_person(face, int(cid))
    except ValueError:
        raise InputError("--merge A,B / --rename ID=NAME / --not-this FACE@ID take cluster ids "
                         "as integers") from None


def _report(result: object, where: Path) -> None:
    from facerank.clustering.pipeline import Clusters

    assert isinstance(result, Clusters)
    n_un = int((result.labels < 0).sum())
    out.print(f"{len(result.paths)} face(s) in {len(result)} cluster(s), {n_un} unassigned, "
              f"{len(result.failures)} photo(s) without a face; wrote {where}",
              markup=False, highlight=False)


def cluster_command(
    photos: Annotated[list[Path], typer.Argument(help="Photo folders or files.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for clusters.json, one contact "
                                          "sheet per cluster and the cluster store.")],
    backbone: Backbone = "dlib",
    detector: Detector = "yunet",
    merge: Merge = None,
    rename: Rename = None,
    not_this: NotThis = None,
) -> None:
    """Group the faces of unlabelled photos into people (one face per photo, the largest).

    Re-running with the same --out adds new photos to the existing clusters and keeps the
    corrections given with --merge, --rename and --not-this."""
    from facerank.clustering.pipeline import cluster_features, face_keys, write_outputs
    from facerank.clustering.store import ClusterStore
    from facerank.face.features import make_extractor
    from facerank.face.imageio import expand_images

    files = expand_images(photos)
    fx = make_extractor(detector, "largest", "none", backbone=backbone)
    fs = fx.extract_paths(files, progress=False)
    with ClusterStore.open(out_dir) as store:
        _corrections(store, merge, rename, not_this)
        result = cluster_features(fs, fx.model_id, face_keys(fs), store=store)
    _report(result, write_outputs(result, out_dir, boxes=fs.boxes))


def gallery_cluster_command(
    folder: Annotated[Path, typer.Argument(help="Gallery folder.")],
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Folder for clusters.json and contact sheets (default: "
        "<gallery>/clusters).")] = None,
    merge: Merge = None,
    rename: Rename = None,
    not_this: NotThis = None,
    every: Annotated[bool, typer.Option(
        "--all", help="Cluster every face of the gallery, also those enrolled under a "
        "person's name.")] = False,
) -> None:
    """Group a gallery's unlabelled faces into people (enrolled with `gallery add
    --unlabelled`, or under the name unknown / unlabelled / unnamed); --all groups every face.
    The clusters and corrections are kept in the gallery folder (clusters.sqlite), so later
    runs only place newly added faces."""
    from facerank.clustering.pipeline import cluster_features, write_outputs
    from facerank.clustering.store import ClusterStore
    from facerank.gallery import StoredGallery

    with StoredGallery.open(folder) as g:
        fs = g.features(grids=False)
        ids = g.image_ids()
        model_id = g.extractor.model_id
        if not every:
            rows = g.unlabelled_rows()
            if not len(rows):
                raise InputError(f"{folder}: no unlabelled faces to cluster (enrol them with "
                                 "`facerank gallery add G PHOTOS --unlabelled`), or pass --all "
                                 "to cluster every face")
            fs, ids = fs.take(rows), ids[rows]
        keys = [f"img{int(i)}" for i in ids]
    with ClusterStore.open(folder) as store:
        _corrections(store, merge, rename, not_this)
        result = cluster_features(fs, model_id, keys, store=store)
    _report(result, write_outputs(result, out_dir or folder / "clusters", boxes=fs.boxes))
