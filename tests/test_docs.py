"""The docs match the code: every `facerank ...` command the README names exists and answers
--help; eval's help lists every protocol; `train url`'s defaults are the bundled head's recipe."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from facerank.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _is_group(cmd: object) -> bool:
    return isinstance(getattr(cmd, "commands", None), dict)  # typer vendors its own click


def _command_paths() -> tuple[set[tuple[str, ...]], list[str]]:
    """The command path (group, subcommand) of every `facerank ...` the README names, in code
    blocks and in inline code; fails on a word that is not a command of a group."""
    root = typer.main.get_command(app)
    lines = re.findall(r"^\s*facerank (.+)$", README, flags=re.M)
    lines += re.findall(r"`facerank ([^`]+)`", README)
    out, bad = set(), []
    for line in lines:
        words = shlex.split(line.split("#")[0].replace("|", " "))
        cmd, path = root, []
        for w in words:
            if not _is_group(cmd) or w.startswith("-") or w in ("...", "…"):
                break
            sub = cmd.commands.get(w)
            if sub is None:
                bad.append(f"facerank {' '.join([*path, w])}")
                break
            cmd, path = sub, [*path, w]
        if path:
            out.add(tuple(path))
    return out, bad


_PATHS, BAD = _command_paths()
PATHS = sorted(_PATHS)


def test_readme_names_only_existing_commands() -> None:
    assert not BAD, f"the README names commands that do not exist: {BAD}"


def test_readme_names_the_main_commands() -> None:
    assert {("compare",), ("search",), ("gallery", "add"), ("eval",), ("serve",)} <= set(PATHS)


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) for p in PATHS])
def test_readme_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_no_gallery_search_in_readme() -> None:
    assert "gallery search" not in README  # the command is `facerank search --gallery G`


def test_eval_help_lists_every_protocol() -> None:
    from facerank.eval.protocols import PHOTO, PROTOCOLS

    out = " ".join(CliRunner().invoke(app, ["eval", "--help"], terminal_width=200).output.split())
    out = out.replace("│", " ")
    out = " ".join(out.split())
    for name in (*PROTOCOLS, *PHOTO):
        assert name in out, name


def test_train_url_defaults_reproduce_the_bundled_head() -> None:
    """Every option of the bundled head's recorded command equals the command's default."""
    from facerank.cli.train import url_command

    meta = json.loads(next((ROOT / "src/facerank/uncertainty/models").glob("url-*.json"))
                      .read_text())
    words = shlex.split(meta["command"])
    assert words[:3] == ["facerank", "train", "url"]
    import inspect

    params = inspect.signature(url_command).parameters
    defaults = {n: p.default for n, p in params.items()}
    i = 3
    while i < len(words):
        w = words[i]
        if w in ("--fold", "--other-fold"):
            assert defaults["fold"] is (w == "--fold")
        elif w in ("--no-progress", "--progress", "--out"):
            i += w == "--out"  # where it was written and bars: not part of the recipe
        else:
            name = w.lstrip("-").replace("-", "_")
            value = words[i + 1]
            assert str(defaults[name]) == value, (name, defaults[name], value)
            i += 1
        i += 1
