"""`facerank train HEAD ...`: one command group; each learned head adds its own command.

A head's module defines `register(train_app)`; listing it in `HEAD_MODULES` is all it takes
(missing modules are skipped, so the group works while heads are still being written).
"""

from __future__ import annotations

import importlib

import typer

HEAD_MODULES = ("facerank.calibrate.train", "facerank.uncertainty.train",
                "facerank.rerank.vit_train")

train_app = typer.Typer(name="train", no_args_is_help=True,
                        help="Train a head on LFW's identity-disjoint split (backbone frozen).")


def register(app: typer.Typer) -> None:
    for module in HEAD_MODULES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or not module.startswith(e.name):
                raise  # a head that exists but fails to import is a bug, not a skip
            continue
        mod.register(train_app)
    app.add_typer(train_app, name="train")
