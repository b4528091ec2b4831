"""`facerank train ida-l`: fit IDA-L's support-set regressor on one LFW identity half.

The anchors are one seeded image per person of the training half; every training-half image
is a training face, its target the density term of its k nearest anchors of *other* people
(its own identity removed, as for a face the anchors have never seen). R^2 is reported on the
other half's faces against their IDA-R density term with the same anchors: how well the
regressor reproduces IDA-R on people it never saw.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from facerank.calibrate.anchors import AnchorSet, SupportIndex, support_excluding_own
from facerank.calibrate.ida import DEFAULT_K, DEFAULT_TAU, IDAL
from facerank.calibrate.ssr import KIND, SSR, r2, train_ssr
from facerank.cli_options import Backbone


def density_targets(x: np.ndarray, labels: np.ndarray, anchors: AnchorSet, k: int,
                    tau: float) -> np.ndarray:
    """(N,) v = logsumexp(tau s) / tau over each face's k nearest other-identity anchors."""
    from scipy.special import logsumexp

    s = support_excluding_own(x, labels, anchors, k)
    return logsumexp(tau * s, axis=1) / tau


def fit_idal(anchors: AnchorSet, x: np.ndarray, labels: np.ndarray, k: int = DEFAULT_K,
             tau: float = DEFAULT_TAU, hidden: int = 256, epochs: int = 300, seed: int = 0,
             progress: bool = False) -> tuple[IDAL, dict[str, Any]]:
    """Train an SSR on faces x (N, D) with identity `labels` against `anchors`."""
    v = density_targets(x, labels, anchors, k, tau)
    model, losses = train_ssr(x, v, hidden=hidden, epochs=epochs, seed=seed, progress=progress)
    config = {"kind": KIND, "backbone": anchors.model_id, "dim": int(x.shape[1]),
              "hidden": hidden, "tau": tau, "k": k, "seed": seed, "epochs": epochs,
              "n_train_faces": len(x), "n_anchors": len(anchors),
              "r2_train": r2(model.predict(x), v), "final_loss": losses[-1]}
    return IDAL.from_model(model, config), config


def heldout_r2(cal: IDAL, anchors: AnchorSet, x: np.ndarray) -> float:
    """R^2 of IDA-L's v against IDA-R's (same anchors, k, tau) on faces disjoint from them."""
    from scipy.special import logsumexp

    s = SupportIndex(anchors).search(x, cal.k)[0]
    return r2(cal.model.predict(x), logsumexp(cal.tau * s, axis=1) / cal.tau)


def train_command(
    out: Annotated[Path, typer.Option("--out", help="Checkpoint path (NAME.pt + NAME.json).")]
    = Path("ida-l.pt"),
    train_fold: Annotated[bool, typer.Option(
        "--train-fold/--other-fold", help="Train on identity half True (the bundled default's) "
        "or False of facerank.train.split.identity_fold.")] = True,
    k: Annotated[int, typer.Option(help="Support set size.")] = DEFAULT_K,
    tau: Annotated[float, typer.Option(help="DAO temperature.")] = DEFAULT_TAU,
    hidden: Annotated[int, typer.Option(help="Hidden width of the 2-layer regressor.")] = 256,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the anchor pick and the training.")] = 0,
    save_anchors: Annotated[Path | None, typer.Option(
        help="Also write the anchor set (.npz) that IDA-R and AS-norm can use.")] = None,
    backbone: Backbone = "dlib",
) -> None:
    """Train IDA-L (backbone frozen) on LFW identity half; report held-out R^2."""
    from rich.console import Console

    from facerank.calibrate.lfw import anchors_from_rows, half_anchor_rows
    from facerank.eval.protocols import EvalData, lfw_extractor
    from facerank.train.checkpoint import save_checkpoint
    from facerank.train.split import describe_split, identity_fold

    console = Console()
    data = EvalData.load(lfw_extractor(backbone=backbone))  # LFW features of that backbone
    fold = identity_fold(data.lfw.labels, 0)
    rows = np.flatnonzero(fold == train_fold)
    test_rows = np.flatnonzero(fold != train_fold)
    a_rows = half_anchor_rows(data, train_fold, per_identity=1, seed=seed)
    anchors = anchors_from_rows(data, a_rows, split=describe_split(train_fold), seed=seed,
                                per_identity=1)
    emb = data.features.embeddings
    cal, config = fit_idal(anchors, emb[rows], np.asarray(data.lfw.names)[data.lfw.labels[rows]],
                           k, tau, hidden, epochs, seed, progress=True)
    config["r2_heldout"] = heldout_r2(cal, anchors, emb[test_rows])
    config["n_heldout_faces"] = len(test_rows)
    config["command"] = "facerank " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    config["split"] = describe_split(train_fold)
    config["anchors"] = {"per_identity": 1, "seed": seed, "n": len(anchors),
                         "identities": sorted(set(anchors.labels.tolist()))}
    config["digest"] = f"{anchors.digest()}-k{k}-t{tau:g}-s{seed}"
    assert isinstance(cal.model, SSR)
    path = save_checkpoint(out, cal.model, config)
    if save_anchors is not None:
        anchors.meta.update(split=describe_split(train_fold))
        anchors.save(save_anchors)
    console.print(f"IDA-L: R^2 train {config['r2_train']:.4f}, held-out identity half "
                  f"{config['r2_heldout']:.4f} ({len(test_rows)} faces); wrote {path}")


def register(train_app: typer.Typer) -> None:
    """Add `facerank train ida-l`."""
    train_app.command(name="ida-l")(train_command)
