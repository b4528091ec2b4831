"""Load and validate images: format sniffing, EXIF orientation, colour modes, size limits."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facerank.errors import ImageError, InputError

__all__ = ["ALLOWED_FORMATS", "IMAGE_SUFFIXES", "JPEG_SCALES", "MAX_PIXELS", "MIN_SIDE",
           "expand_images", "list_images", "load_image", "load_image_reduced", "oriented_size",
           "save_image"]


MAX_PIXELS = 50_000_000  # refuse larger images before decoding (decompression bombs)
MIN_SIDE = 32  # smaller images cannot hold a detectable face
ALLOWED_FORMATS = {"JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF", "PPM"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursive, sorted by path)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def expand_images(paths: list[Path]) -> list[Path]:
    """Files as given, folders expanded to their image files (`list_images`), in order."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(list_images(p))
        elif p.exists():
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    return files


def _describe(source: str | Path | bytes, name: str | None) -> str:
    if name:
        return name
    return "<uploaded bytes>" if isinstance(source, bytes) else str(source)


def load_image(
    source: str | Path | bytes, name: str | None = None, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Read an image as uint8 RGB (H, W, 3), upright (EXIF orientation applied).

    Grayscale, palette, CMYK and alpha images are converted to RGB (alpha composited on white).
    Raises `ImageError` naming the file for empty, non-image, truncated, tiny or huge input.
    """
    return _decode(source, name, max_pixels, None, 1)[0]


JPEG_SCALES = (8, 4, 2)  # what libjpeg's DCT scaling decodes to cheaply: 1/8, 1/4, 1/2


def load_image_reduced(
    source: str | Path | bytes, name: str | None = None, min_long_side: int | None = None,
    scale: int = 1, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, int]:
    """`load_image`, with a JPEG decoded at 1/k of its size by libjpeg's DCT scaling (PIL's
    `Image.draft`), which skips most of the decoding work. Returns (image, k): pixel (x, y) of
    the image covers the original's k x k block at (k x, k y); k = 1 for other formats.

    min_long_side: the largest k in `JPEG_SCALES` that keeps the long side >= it;
    scale: else this k (1, 2, 4 or 8). The checks of `load_image` apply to the full size."""
    return _decode(source, name, max_pixels, min_long_side, scale)


def oriented_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image as shown, EXIF orientation applied, read from its
    header (for an image `load_image` or `load_image_reduced` has already accepted)."""
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
            w, h = h, w
    return w, h


def _decode(source: str | Path | bytes, name: str | None, max_pixels: int,
            min_long_side: int | None, scale: int) -> tuple[np.ndarray, int]:
    label = _describe(source, name)
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.exists():
            raise ImageError(f"{label}: file not found")
        if not path.is_file():
            raise ImageError(f"{label}: not a regular file")
        data = path.read_bytes()
    if not data:
        raise ImageError(f"{label}: file is empty (0 bytes); pass a JPEG or PNG photo")
    if scale not in (1, *JPEG_SCALES):
        raise InputError(f"scale must be 1, 2, 4 or 8, got {scale}")
    k = 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "?"
            if fmt not in ALLOWED_FORMATS:
                raise ImageError(f"{label}: unsupported image format {fmt}; use JPEG or PNG")
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(
                    f"{label}: image is {w}x{h} = {w * h:,} pixels, over the limit of "
                    f"{max_pixels:,}; downscale it first"
                )
            if min(w, h) < MIN_SIDE:
                raise ImageError(
                    f"{label}: image is only {w}x{h} pixels; a face needs at least "
                    f"{MIN_SIDE}x{MIN_SIDE}"
                )
            want = scale
            if min_long_side is not None:
                want = next((s for s in JPEG_SCALES if max(w, h) / s >= min_long_side), 1)
            if fmt == "JPEG" and want > 1:
                img.draft("RGB", (-(-w // want), -(-h // want)))
            img.load()
            k = max(1, round(w / img.size[0]))
            img = ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image (unrecognised format); pass a JPEG or PNG "
                         "photo") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{label}: refusing to decode, the header claims too many pixels "
                         f"({e})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{label}: image data is corrupt or truncated ({e}); re-export or "
                         "re-download the file") from None
    return _to_rgb(img), k


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 RGB (H, W, 3)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode == "I;16" or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        arr = (255 * (arr - arr.min()) / max(np.ptp(arr), 1)).astype(np.uint8)
        img = Image.fromarray(arr)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def save_image(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 RGB array atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), "PNG")
    Image.fromarray(image).save(tmp, format=fmt)
    tmp.replace(path)
