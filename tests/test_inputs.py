"""Bad and unusual input: one clear line naming the file, exit code 2, no traceback."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerank.cli.app import main
from facerank.errors import ImageError
from facerank.face.imageio import load_image


@pytest.fixture(scope="module")
def face_jpg(lfw_root: Path) -> Path:
    return lfw_root / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature + IHDR chunk claiming width x height (no pixel data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n"
    for kind, body in ((b"IHDR", ihdr), (b"IDAT", zlib.compress(b"\0" * 64)), (b"IEND", b"")):
        crc = struct.pack(">I", zlib.crc32(kind + body))
        out += struct.pack(">I", len(body)) + kind + body + crc
    return out


def _bad_files(tmp: Path, face_jpg: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a regex the error must match)."""
    empty = tmp / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp / "notes.jpg"
    text.write_text("this is not a picture\n")
    truncated = tmp / "truncated.jpg"
    truncated.write_bytes(face_jpg.read_bytes()[:3000])
    tiny = tmp / "tiny.png"
    Image.new("RGB", (1, 1)).save(tiny)
    bomb = tmp / "bomb.png"
    bomb.write_bytes(_png_header(30000, 30000))
    noface = tmp / "noface.png"
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(noface)
    return {
        "empty": (empty, "empty"),
        "text": (text, "not an image"),
        "truncated": (truncated, "corrupt or truncated"),
        "tiny": (tiny, "1x1"),
        "bomb": (bomb, "30000x30000|900000000 pixels"),
        "noface": (noface, "no face found"),
    }


@pytest.mark.parametrize("case", ["empty", "text", "truncated", "tiny", "bomb", "noface"])
def test_bad_image_cli(case: str, tmp_path: Path, face_jpg: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    bad, pattern = _bad_files(tmp_path, face_jpg)[case]
    code = main(["compare", str(bad), str(face_jpg)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and str(bad) in err
    assert pytest.importorskip("re").search(pattern, err), err
    assert "Traceback" not in err


def test_bad_model_file_cli(tmp_path: Path, face_jpg: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    from facerank._util.paths import DLIB_RESNET, bundled_model

    bad = tmp_path / "cut.dat"
    bad.write_bytes(bundled_model(DLIB_RESNET).read_bytes()[:100_000])
    code = main(["compare", str(face_jpg), str(face_jpg), "--backbone", "dlib", "--model",
                 str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "cut.dat" in err and "truncated" in err


def test_no_traceback_in_a_real_process(tmp_path: Path, face_jpg: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    proc = subprocess.run([sys.executable, "-m", "facerank.cli", "compare", str(text),
                           str(face_jpg)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: ") and "notes.jpg" in proc.stderr


# ---- unusual but valid input is handled -----------------------------------------------------


def _embed(extractor, image: np.ndarray) -> np.ndarray:  # noqa: ANN001
    return extractor.extract(image).embedding


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA"])
def test_modes_are_converted(mode: str, tmp_path: Path, face_jpg: Path, extractor) -> None:  # noqa: ANN001
    ref = _embed(extractor, load_image(face_jpg))
    img = Image.open(face_jpg).convert(mode)
    path = tmp_path / ("face.png" if mode == "RGBA" else "face.jpg")
    if mode == "RGBA":
        img.putalpha(255)
        img.save(path)
    else:
        img.save(path, quality=98)
    arr = load_image(path)
    assert arr.dtype == np.uint8 and arr.shape == (250, 250, 3)
    cos = float(_embed(extractor, arr) @ ref)
    assert cos > (0.95 if mode == "L" else 0.99), cos


@pytest.mark.parametrize("orientation,rotate", [(6, Image.Transpose.ROTATE_90),
                                                (8, Image.Transpose.ROTATE_270),
                                                (3, Image.Transpose.ROTATE_180)])
def test_exif_rotation_is_applied(orientation: int, rotate: Image.Transpose, tmp_path: Path,
                                  face_jpg: Path, extractor) -> None:  # noqa: ANN001
    upright = Image.open(face_jpg)
    stored = upright.transpose(rotate)  # pixels stored sideways, EXIF says how to fix them
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=98)
    arr = load_image(path)
    assert arr.shape == (250, 250, 3)
    diff = np.abs(arr.astype(int) - np.asarray(upright).astype(int)).mean()
    assert diff < 3, f"mean pixel difference {diff} after EXIF transpose"
    cos = float(_embed(extractor, arr) @ _embed(extractor, load_image(face_jpg)))
    assert cos > 0.99


def test_load_image_bytes_names_the_upload() -> None:
    with pytest.raises(ImageError, match="upload.bin: not an image"):
        load_image(b"GIF89a-not-really", name="upload.bin")


def test_two_faces(tmp_path: Path, lfw_root: Path, face_jpg: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    other = lfw_root / "images" / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg"
    both = np.concatenate([load_image(face_jpg), load_image(other)], axis=1)  # 250 x 500
    path = tmp_path / "two.png"
    Image.fromarray(both).save(path)
    code = main(["compare", str(path), str(face_jpg), "--faces", "strict"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "2 faces found" in err and "two.png" in err
    assert main(["compare", str(path), str(face_jpg), "--faces", "largest"]) == 0
