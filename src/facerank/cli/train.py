"""`facerank train HEAD ...`: one command group, a command per learned head (IDA-L, URL,
Face-ViT). The training code lives beside each head (`calibrate.train`, `uncertainty.train`,
`rerank.vit.train`); these commands only parse options, run it and print what was written.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from facerank.calibrate.ida import DEFAULT_K, DEFAULT_TAU
from facerank.cli.options import Backbone
from facerank.errors import InputError
from facerank.uncertainty.train import EDITS

# the bundled URL head's recipe (uncertainty/models/url-*.json `command`): the defaults
# reproduce it
URL_EDITS = "crop,lowres,mask,blur"
URL_PER_EDIT = 1200

train_app = typer.Typer(name="train", no_args_is_help=True,
                        help="Train a head on LFW's identity-disjoint split (backbone frozen).")


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")


@train_app.command("ida-l")
def ida_l_command(
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

    from facerank._util.checkpoint import save_checkpoint
    from facerank.calibrate.ssr import SSR
    from facerank.calibrate.train import fit_idal, heldout_r2
    from facerank.eval.protocols import EvalData, lfw_extractor
    from facerank.eval.studies.calibration_protocols import anchors_from_rows, half_anchor_rows
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


@train_app.command("url")
def url_command(
    out: Annotated[Path, typer.Option("--out", help="Checkpoint path (NAME.pt + NAME.json).")
                   ] = Path("url-fold-true.pt"),
    fold: Annotated[bool, typer.Option("--fold/--other-fold",
                                       help="Train on identity fold True (default) or False."
                                       )] = True,
    epochs: Annotated[int, typer.Option(help="Passes over the samples.")] = 12,
    k: Annotated[int, typer.Option("--k", help="Number of sub-embeddings.")] = 16,
    width: Annotated[int, typer.Option(help="Total embedding width (multiple of K).")] = 512,
    grid: Annotated[str, typer.Option(help="Grid the head reads besides the descriptor "
                                            "('none': descriptor only; auto: l1 (4x4) on dlib, "
                                            "l2 (7x7) on sface).")] = "auto",
    edits: Annotated[str, typer.Option(help="Comma-separated edited copies to train on "
                                            f"(any of {', '.join(EDITS)}).")
                     ] = URL_EDITS,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and batch order.")] = 0,
    split_seed: Annotated[int, typer.Option(help="Seed of the identity split.")] = 0,
    per_edit: Annotated[int | None, typer.Option(
        help="Edit only this many LFW images per edit kind (disjoint seeded subsets; 0: every "
        "image, as the shared harness caches them).")] = URL_PER_EDIT,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    backbone: Backbone = "dlib",
) -> None:
    """Train URL confidence-aware sub-embeddings (backbone frozen)."""
    from facerank._util.checkpoint import save_checkpoint
    from facerank.train.split import describe_split
    from facerank.uncertainty.train import (
        build_samples,
        default_config,
        load_url_data,
        train_url,
    )
    from facerank.uncertainty.url import KIND, run_head

    kinds = tuple(e for e in edits.split(",") if e)
    unknown = sorted(set(kinds) - set(EDITS))
    if unknown:
        raise InputError(f"unknown edit(s) {unknown}; choose from {', '.join(EDITS)}")
    if grid == "auto":
        grid = "l1" if backbone == "dlib" else "l2"
    g = None if grid == "none" else grid
    ud = load_url_data(kinds, per_edit or None, split_seed, progress=progress,
                       backbone=backbone)
    samples = build_samples(ud, fold, g)
    config = default_config(ud, g, k, width)
    head, stats = train_url(samples, config, epochs=epochs, seed=seed, progress=progress)
    ref = run_head(head, samples.desc[samples.kinds == "clean"],
                   None if g is None else samples.grid[samples.kinds == "clean"])
    meta = {"kind": KIND, "backbone": ud.data.extractor.model_id,
            "config": config.to_dict(),
            "command": " ".join(["facerank", *sys.argv[1:]]), "seed": seed,
            "split": describe_split(fold, split_seed), "data": ud.describe,
            "edits": list(kinds),
            # 1.0 on the confidence bar = the median clean training face
            "reference_confidence": float(np.median(ref.face)), "training": stats}
    path = save_checkpoint(out, head, meta)
    typer.echo(f"wrote {path} ({stats['samples']} samples, {stats['classes']} identities, "
               f"{stats['seconds']:.0f} s; identification loss "
               f"{stats['history']['identification'][0]:.3f} -> "
               f"{stats['history']['identification'][-1]:.3f})")


@train_app.command("vit")
def vit_command(
    out: Annotated[Path, typer.Option("--out", help="Checkpoint path (NAME.pt + "
                                      "NAME.json).")] = Path("vit-h2l.pt"),
    variant: Annotated[str, typer.Option(help="h2l (ships), h2 or h1.")] = "h2l",
    grid: Annotated[str, typer.Option(help="Backbone grid: dlib l1 (4x4), l2 (8x8), l2p4; "
                                            "sface l2 (7x7).")] = "l1",
    width: Annotated[int, typer.Option(help="Token width d (the bundled model: 128).")
                     ] = 128,
    depth: Annotated[int, typer.Option(help="Transformer blocks (1-8).")] = 1,
    heads: Annotated[int, typer.Option(help="Attention heads (1-8).")] = 4,
    embed_dim: Annotated[int, typer.Option(help="Size of f1, f2 / the embedding.")] = 128,
    epochs: Annotated[int, typer.Option(help="Passes over the training pairs (the bundled "
                                        "model: 16).")] = 16,
    batch: Annotated[int, typer.Option(help="Pairs per step.")] = 256,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    train_fold: Annotated[int, typer.Option(help="Identity half to train on (1 = fold "
                                            "True of facerank.train.split).")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of model, pairs and held-out people.")
                    ] = 0,
    variants: Annotated[str, typer.Option(help="Occluded variants to train on, comma-"
                                          "separated.")] = "crop,mask,sunglasses",
    backbone: Backbone = "dlib",
    distil_from: Annotated[Path | None, typer.Option(
        help="A Face-ViT H2L checkpoint (same backbone, grid and identity half) whose f1 and "
        "f2 the new model also learns to reproduce: distils a wider model into a narrower "
        "one.")] = None,
    distil_weight: Annotated[float, typer.Option(
        help="Weight of the distillation term (with --distil-from).")] = 1.0,
    subfold: Annotated[int, typer.Option(
        help="Train on one part of the identity half only (1 or 0 of a second seeded split), "
        "so that `facerank train gate --checkpoint` can fit the gate on the other part's "
        "people; -1: the whole half.")] = -1,
    extra_seeds: Annotated[str, typer.Option(
        help="More draws of the --extra-variants, made with these seeds (comma-separated) on "
        "the training images: a training pair takes any one draw of its variant.")] = "",
    extra_variants: Annotated[str, typer.Option(
        help="Variants that get the --extra-seeds draws, comma-separated.")] = "crop",
) -> None:
    """Train a Face-ViT Stage 2 on one identity half of LFW (backbone frozen)."""
    import torch
    from rich.console import Console

    from facerank.rerank.vit.train import train_vit

    if train_fold not in (0, 1) or subfold not in (-1, 0, 1) or epochs < 1 or batch < 1 or lr <= 0:
        raise InputError(f"--train-fold must be 0 or 1, --subfold -1, 0 or 1, and --epochs, "
                         f"--batch, --lr positive; got {train_fold}, {subfold}, {epochs}, "
                         f"{batch}, {lr}")
    torch.manual_seed(seed)
    command = "facerank train vit " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    kinds = tuple(v.strip() for v in variants.split(",") if v.strip())
    try:
        seeds = tuple(int(v) for v in extra_seeds.split(",") if v.strip())
    except ValueError:
        raise InputError(f"--extra-seeds takes integers separated by commas, got "
                         f"{extra_seeds!r}") from None
    extras = tuple(v.strip() for v in extra_variants.split(",") if v.strip()) if seeds else ()
    data = None
    if backbone != "dlib":  # dlib: train_vit loads the evaluation set-up's features itself
        from facerank.eval.protocols import lfw_extractor
        from facerank.train.data import VARIANTS, load_training_data

        unknown = sorted(set(kinds) - set(VARIANTS))
        if unknown:
            raise InputError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
        data = load_training_data(lfw_extractor(backbone=backbone), kinds=kinds)
    res = train_vit({"variant": variant, "width": width, "depth": depth, "heads": heads,
                     "embed_dim": embed_dim}, grid, bool(train_fold), epochs, batch, lr,
                    seed, out, command, data=data, variants=kinds, teacher=distil_from,
                    distil=distil_weight, subfold=None if subfold < 0 else bool(subfold),
                    extra_seeds=seeds, extra_variants=extras)
    m = res["config"]["measured"]
    Console().print(f"trained in {m['train_seconds']:.0f} s; held-out AUC "
                    f"{m['history'][-1]['val_auc']:.4f} (cosine "
                    f"{m['val_auc_stage1_cosine']:.4f}); alpha {res['config']['alpha']:g}"
                    f" -> wrote {out}")


@train_app.command("gate")
def gate_command(
    out: Annotated[Path, typer.Option("--out", help="Gate JSON to write (--bundle: the "
                                      "bundled gate of this backbone).")] = Path("gate.json"),
    bundle: Annotated[bool, typer.Option(help="Write it where `--gate auto` finds it, and only "
                                         "if it sends queries and loses no held-out P@1.")
                      ] = False,
    n: Annotated[int, typer.Option("--n", help="Photo-variant queries per identity half.")
                 ] = 300,
    protocol_limit: Annotated[int, typer.Option(help="Seeded queries per LFW protocol.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the query subsets.")] = 0,
    max_loss: Annotated[float, typer.Option(help="P@1 points any group may lose on the fitting "
                                            "half at the chosen threshold.")] = 0.0,
    report: Annotated[Path | None, typer.Option(help="Also write the per-group table (JSON).")
                      ] = None,
    backbone: Backbone = "sface",
    checkpoint: Annotated[Path | None, typer.Option(
        help="Fit the gate of this Face-ViT checkpoint instead of EMD's (--bundle: written "
        "beside it as NAME.gate.json, which `--stage2 vit` then uses).")] = None,
) -> None:
    """Fit a Stage-2 gate on what Stage 2 (EMD, or the Face-ViT --checkpoint) does to each
    query (identity half A; abstains if it never helps) and report Stage 1 vs gated Stage 2
    per protocol and variant on half B."""
    import json

    from rich.console import Console
    from rich.table import Table

    from facerank.rerank.gate import bundled_gate_path, pre_gate_path
    from facerank.rerank.vit.reranker import benefit_gate_path
    from facerank.train.gate import train_gate

    if n < 10 or protocol_limit < 10:
        raise InputError(f"--n and --protocol-limit must be at least 10, got {n} and "
                         f"{protocol_limit}")
    for path in (out, report):  # before minutes of scoring, not after
        if path is not None:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(f"{path}: cannot write there ({e.strerror}); pass another "
                                 "path") from None
    gate, res, pre = train_gate(backbone, n=n, seed=seed, protocol_limit=protocol_limit,
                                max_loss=max_loss, checkpoint=checkpoint)
    table = Table(title=f"held-out identity half ({backbone}): P@1 %")
    for col in ("group", "queries", "scored", "sent", "Stage 1", "ViT" if checkpoint else "EMD",
                "gated", "change"):
        table.add_column(col)
    for r in res["held_out_half"]:
        table.add_row(r["group"], str(r["queries"]), f"{100 * r['pre_passed']:.1f} %",
                      f"{100 * r['sent']:.1f} %",
                      f"{r['p1_stage1']:.2f}", f"{r['p1_stage2']:.2f}", f"{r['p1_gated']:.2f}",
                      f"{r['change']:+.2f}")
    console = Console()
    console.print(table)
    if report is not None:
        report.write_text(json.dumps({"gate_meta": gate.meta, "threshold": gate.threshold,
                                      **res}, indent=2))
    worst = min(r["change"] for r in res["held_out_half"])
    sends = any(r["sent"] > 0 for r in res["held_out_half"])
    if bundle:
        if not sends or worst < -0.3:
            console.print(f"not bundled: the gate {'abstains' if not sends else 'loses'} "
                          f"(worst held-out change {worst:+.2f} P@1)")
            return
        out = (bundled_gate_path("l2", "apc", backbone) if checkpoint is None
               else benefit_gate_path(checkpoint))
    console.print(f"threshold {gate.threshold:.4f} ({'abstains' if not sends else 'sends'}); "
                  f"wrote {gate.save(out)}")
    if pre is not None:  # a pre-gate left there for another gate is ignored (`for_gate`)
        console.print(f"pre-gate (Stage 2 scores only the queries it passes): wrote "
                      f"{pre.save(pre_gate_path(out))}")
