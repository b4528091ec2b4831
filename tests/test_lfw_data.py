"""LFW data checks: missing or partly missing folders and malformed pairs.txt name file + line."""

from __future__ import annotations

from pathlib import Path

import pytest

from facerank.cli.app import main
from facerank.errors import DataError
from facerank.eval.readers.lfw import load_lfw, load_pairs


def _fake_lfw(root: Path, people: dict[str, int]) -> Path:
    lfw = root / "lfw"
    for name, n in people.items():
        d = lfw / "images" / name
        d.mkdir(parents=True)
        for i in range(1, n + 1):
            (d / f"{name}_{i:04d}.jpg").write_bytes(b"")
    (lfw / "lfw-names.txt").write_text("".join(f"{k} {v}\n" for k, v in people.items()))
    return lfw


def test_real_lfw_counts(lfw_root: Path) -> None:
    lfw = load_lfw(lfw_root)
    assert len(lfw) == 13_233 and len(lfw.names) == 5_749
    assert len(lfw.people_with_at_least(2)) == 9_164
    pairs = load_pairs(lfw)
    assert len(pairs.a) == 6_000 and pairs.same.sum() == 3_000
    assert set(pairs.fold.tolist()) == set(range(10))


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image folder missing"):
        load_lfw(tmp_path / "lfw")


def test_partly_missing(tmp_path: Path) -> None:
    lfw = _fake_lfw(tmp_path, {"Ann_A": 2, "Bob_B": 3})
    (lfw / "images" / "Bob_B" / "Bob_B_0003.jpg").unlink()
    with pytest.raises(DataError, match=r"Bob_B: 2 images, but .*lfw-names.txt lists 3"):
        load_lfw(lfw)
    lfw2 = _fake_lfw(tmp_path / "two", {"Ann_A": 2, "Bob_B": 3})
    for f in (lfw2 / "images" / "Bob_B").iterdir():
        f.unlink()
    (lfw2 / "images" / "Bob_B").rmdir()
    with pytest.raises(DataError, match="have no folder"):
        load_lfw(lfw2)


@pytest.mark.parametrize(
    "text,line,what",
    [
        ("", 1, "empty"),
        ("ten 1\n", 1, "header"),
        ("1 1\nAnn_A 1 2\n", 3, "ends early"),
        ("1 1\nAnn_A 1\nAnn_A 1 Bob_B 1\n", 2, "matched pair"),
        ("1 1\nAnn_A 1 x\nAnn_A 1 Bob_B 1\n", 2, "integers"),
        ("1 1\nAnn_A 1 9\nAnn_A 1 Bob_B 1\n", 2, "no image Ann_A #9"),
        ("1 1\nAnn_A 1 2\nAnn_A 1 2\n", 3, "mismatched pair"),
    ],
)
def test_malformed_pairs(tmp_path: Path, text: str, line: int, what: str) -> None:
    lfw = load_lfw(_fake_lfw(tmp_path, {"Ann_A": 2, "Bob_B": 3}))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(text)
    with pytest.raises(DataError, match=rf"pairs.txt:{line}: .*{what}"):
        load_pairs(lfw, pairs)


def test_unknown_protocol_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "lfw-bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown protocol 'lfw-bogus'" in err and "lfw-crop" in err


def test_missing_data_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FACERANK_DATA", str(tmp_path / "nowhere"))
    assert main(["eval", "lfw-1680"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "FACERANK_DATA" in err
