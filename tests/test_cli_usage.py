"""Every command and subcommand answers a usage error with one error line, a usage hint and
exit code 2 (never a traceback). The command tree is walked, so new commands are covered."""

from __future__ import annotations

import enum
import types
import typing

import pytest
import typer.main

from facerank.cli.app import app, main

BAD = "not-a-value"


def _walk(cmd, path: tuple[str, ...] = ()):
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _walk(sub, (*path, name))


COMMANDS = dict(_walk(typer.main.get_command(app)))


def _is_group(cmd) -> bool:
    return hasattr(cmd, "commands")


def _required_fill(cmd) -> list[str]:
    """Placeholder values for every required argument and option, so parsing goes on."""
    args: list[str] = []
    for p in cmd.params:
        if not p.required:
            continue
        if p.param_type_name == "argument":
            args.append("x")
        else:
            args += [p.opts[0], "x"]
    return args


def _typed_option(cmd) -> str | None:
    """An option whose values are checked by type: a number, an enum or a literal."""
    for p in cmd.params:
        if p.param_type_name != "option" or getattr(p, "is_flag", False):
            continue
        t = p.type_descriptor.annotation
        if typing.get_origin(t) in (typing.Union, types.UnionType):
            t = next((a for a in typing.get_args(t) if a is not type(None)), t)
        if t in (int, float) or (isinstance(t, type) and issubclass(t, enum.Enum)) \
                or typing.get_origin(t) is typing.Literal:
            return p.opts[0]
    return None


def _case_argv(path: tuple[str, ...], case: str) -> list[str] | None:
    cmd = COMMANDS[path]
    if case == "unknown-option":
        return [*path, "--no-such-option-anywhere"]
    if case == "missing":
        if _is_group(cmd):
            return [*path]  # a group without its subcommand
        if not any(p.required for p in cmd.params):
            return None
        return [*path]
    if _is_group(cmd):
        return None
    opt = _typed_option(cmd)
    return None if opt is None else [*path, *_required_fill(cmd), opt, BAD]


CASES = [(p, c) for p in COMMANDS for c in ("missing", "unknown-option", "bad-type")]


@pytest.mark.parametrize(("path", "case"), CASES,
                         ids=[f"{' '.join(p) or 'facerank'}:{c}" for p, c in CASES])
def test_usage_error_is_one_line_hint_exit_2(path, case, capsys):
    argv = _case_argv(path, case)
    if argv is None:
        pytest.skip(f"'{' '.join(path)}' has no {case.replace('-', ' ')} case "
                    "(no required parameter or no typed option)")
    rc = main(argv)  # an escaping exception (a traceback) fails the test
    cap = capsys.readouterr()
    assert rc == 2, (argv, cap.out, cap.err)
    assert "Traceback" not in cap.err + cap.out
    if _is_group(COMMANDS[path]) and case == "missing":
        assert "Usage:" in cap.out + cap.err  # a bare group prints its help (subcommands)
        return
    text = cap.err
    assert "Usage:" in text, text
    assert f"Try 'facerank{' ' if path else ''}{' '.join(path)} --help' for help." in text, text
    errors = [ln for ln in text.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, text
    if case == "unknown-option":
        assert "--no-such-option-anywhere" in errors[0]
    elif case == "bad-type":
        assert "Invalid value" in errors[0] and BAD not in text.split("Error:")[0]
    else:
        assert "Missing" in errors[0]


def test_every_command_is_walked():
    """The walk reaches subcommands of groups (a guard against a silent empty tree)."""
    assert ("gallery", "add") in COMMANDS and ("train",) in COMMANDS and ("search",) in COMMANDS


def test_an_unwritable_or_unreadable_path_is_one_line_and_exit_2(monkeypatch, capsys):
    """An OSError that reaches the entry point (a path the user gave that cannot be written,
    a full disk) names the file in one line instead of a traceback."""
    import facerank.cli.app as cli

    def deny(**_kw):
        raise PermissionError(13, "Permission denied", "/read-only/out.json")

    monkeypatch.setattr(cli, "app", deny)
    assert cli.main(["extract"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: /read-only/out.json: Permission denied") and "\n" not in err
