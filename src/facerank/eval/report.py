"""Evaluation reports: a JSON file with every number and a markdown table like the papers'."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.2f}"


def identification_table(rows: list[tuple[str, str, dict]]) -> str:
    """rows of (protocol, method, metrics) -> markdown with P@1, RP, MAP@R in %."""
    lines = ["| protocol | method | P@1 | RP | MAP@R | queries |", "|---|---|---:|---:|---:|---:|"]
    for protocol, method, m in rows:
        lines.append(f"| {protocol} | {method} | {_pct(m['p_at_1'])} | {_pct(m['r_precision'])} "
                     f"| {_pct(m['map_at_r'])} | {m['n_queries']} |")
    return "\n".join(lines)


def verification_table(rows: list[tuple[str, dict]]) -> str:
    """rows of (method, metrics) -> markdown: accuracy ± std, TAR@FAR, AUC (%)."""
    lines = ["| method | accuracy | TAR@FAR=1e-3 | TAR@FAR=1e-2 | AUC |",
             "|---|---:|---:|---:|---:|"]
    for method, m in rows:
        lines.append(f"| {method} | {_pct(m['accuracy'])} ± {_pct(m['accuracy_std'])} | "
                     f"{_pct(m['tar_at_far_1e-3'])} | {_pct(m['tar_at_far_1e-2'])} | "
                     f"{_pct(m['auc'])} |")
    return "\n".join(lines)


def openset_table(rows: list[tuple[str, dict]]) -> str:
    """rows of (method, metrics) -> markdown: TPIR at FPIR 1 % and 10 %, rank-1 (%)."""
    lines = ["| method | TPIR@FPIR=1% | TPIR@FPIR=10% | rank-1 |", "|---|---:|---:|---:|"]
    for method, m in rows:
        lines.append(f"| {method} | {_pct(m['tpir_at_fpir_1e-2'])} | "
                     f"{_pct(m['tpir_at_fpir_1e-1'])} | {_pct(m['rank1'])} |")
    return "\n".join(lines)


def _jsonable(x: object) -> object:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def write_report(out_dir: Path, name: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    """<out_dir>/<name>.json and <name>.md (written atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / f"{name}.json", out_dir / f"{name}.md")
    for path, text in zip(paths, (json.dumps(_jsonable(payload), indent=2), markdown + "\n"),
                          strict=True):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return paths
