"""One checkpoint format for every trained head: `NAME.pt` (a torch `state_dict`, read with
`weights_only=True`) beside `NAME.json` (the config: kind, backbone, shapes, the command,
seed and split that made it, and its measured numbers).

Loading checks, before any weight is used, that the files exist and parse, that the kind and
the backbone are the ones the caller needs, and that every tensor has the shape the caller's
freshly built model expects; each failure is one `ModelFileError` line naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from facerank.errors import ModelFileError


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".pt", ".json") else p
    return stem.with_suffix(".pt"), stem.with_suffix(".json")


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: dict[str, Any]) -> Path:
    """Write `path.pt` + `path.json` atomically; returns the `.pt` path."""
    pt, js = _paths(path)
    pt.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for target, write in ((pt, lambda t: torch.save(state, t)),
                          (js, lambda t: Path(t).write_text(json.dumps(config, indent=2)))):
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        write(tmp)
        tmp.replace(target)
    return pt


def read_config(path: str | Path) -> dict[str, Any]:
    """The JSON config of a checkpoint (ModelFileError if missing or not JSON)."""
    _, js = _paths(path)
    try:
        config = json.loads(js.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{js}: checkpoint config not found; a checkpoint is NAME.pt "
                             "beside NAME.json, as `facerank train` writes them") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{js}: checkpoint config is not valid JSON ({e}); retrain or "
                             "restore the file") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{js}: checkpoint config is not a JSON object")
    return config


def load_checkpoint(path: str | Path, kind: str, backbone: str | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, config) of a checkpoint of `kind` made for `backbone` (None: any): its
    model id ("sface_2021dec_int8bq@facerank-features-1") or short name ("sface")."""
    pt, js = _paths(path)
    config = read_config(path)
    if "kind" not in config:
        raise ModelFileError(f"{js}: not a facerank checkpoint config (no 'kind'); pass a {kind} "
                             "checkpoint written by `facerank train`")
    if config.get("kind") != kind:
        raise ModelFileError(f"{js}: a {config.get('kind')!r} checkpoint, not {kind!r}; pass a "
                             f"{kind} checkpoint")
    made_for = str(config.get("backbone", ""))
    if backbone is not None and backbone not in (made_for, made_for.split("_", 1)[0]):
        raise ModelFileError(f"{js}: trained on backbone {config.get('backbone')!r}, but the "
                             f"features in use come from {backbone!r}; train one for this "
                             f"backbone with `facerank train {kind} --backbone ...`")
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"{pt}: checkpoint weights not found") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise ModelFileError(f"{pt}: not a readable torch state_dict ({type(e).__name__}); "
                             "retrain or restore the file") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ModelFileError(f"{pt}: not a state_dict of tensors")
    return state, config


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Copy `state` into `model`, refusing missing, extra or wrongly shaped tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or bad:
        what = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                else f"{bad[0]} has shape {tuple(state[bad[0]].shape)}, expected "
                     f"{tuple(own[bad[0]].shape)}")
        raise ModelFileError(f"{_paths(path)[0]}: checkpoint does not fit the model its config "
                             f"describes ({what}); retrain it with this facerank version")
    model.load_state_dict(state)
