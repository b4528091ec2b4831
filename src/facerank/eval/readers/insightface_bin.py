"""insightface verification `.bin` files (lfw, cfp_fp, agedb_30, calfw, cplfw, mlfw...).

Such a file is a pickle of `(bins, issame_list)`: `bins` a list of 2P encoded images (JPEG or
PNG bytes of pre-aligned 112x112 ArcFace crops; Python 2 `str` in files made with Python 2),
`issame_list` a list of P booleans, pair i being images 2i and 2i+1. The 10 folds are P/10
consecutive pairs each (insightface's unshuffled KFold).

The file is NEVER unpickled: its opcodes are walked with `pickletools.genops` (which decodes
arguments but builds and calls nothing) and only the opcodes that make those two containers
(lists/tuples, byte strings, booleans, memo references) are accepted. Anything else — a global,
a reduce, an object build, numpy arrays — is refused with one line before anything is built.
`write_bin` writes the same format, for building a `.bin` from one's own crops.
"""

from __future__ import annotations

import pickle
import pickletools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerank.errors import DataError

# opcodes that only push containers, bytes, booleans or manage the stack / memo
_BYTES = {"SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_MEMO_PUT = {"BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"}
_MEMO_GET = {"BINGET", "LONG_BINGET", "GET"}
_BOOL = {"NEWTRUE", "NEWFALSE"}
_LIST = {"EMPTY_LIST", "LIST"}
_TUPLES = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_MARK = object()


@dataclass
class VerificationBin:
    """A parsed `.bin`: 2P encoded images and P same/different labels."""

    path: Path
    images: list[bytes]  # (2P,) encoded image files; pair i = images 2i, 2i+1
    same: np.ndarray  # (P,) bool

    def __len__(self) -> int:
        return len(self.same)

    @property
    def a(self) -> np.ndarray:
        """(P,) index of each pair's first image."""
        return np.arange(len(self.same), dtype=np.int64) * 2

    @property
    def b(self) -> np.ndarray:
        """(P,) index of each pair's second image."""
        return self.a + 1

    @property
    def fold(self) -> np.ndarray:
        """(P,) fold of each pair: 10 blocks of consecutive pairs (insightface's KFold)."""
        n = len(self.same)
        return np.arange(n, dtype=np.int64) * 10 // max(n, 1)


def _refuse(path: Path, what: str) -> DataError:
    return DataError(f"{path}: not an insightface verification .bin ({what}); it must hold "
                     "only (list of image bytes, list of booleans) — nothing was executed")


def _walk(data: bytes, path: Path) -> object:
    """The object the pickle `data` describes, built from whitelisted opcodes only."""
    stack: list[object] = []
    memo: dict[int, object] = {}
    try:
        for op, arg, pos in pickletools.genops(data):
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                if len(stack) != 1:
                    raise _refuse(path, f"malformed stream at byte {pos}")
                return stack[0]
            if name in _BYTES:
                stack.append(arg.encode("latin-1") if isinstance(arg, str) else bytes(arg))
            elif name in _BOOL:
                stack.append(name == "NEWTRUE")
            elif name == "INT" and isinstance(arg, bool):  # protocol 0/1 True/False
                stack.append(arg)
            elif name == "MARK":
                stack.append(_MARK)
            elif name in _LIST or name == "TUPLE":
                if name in ("EMPTY_LIST",):
                    stack.append([])
                    continue
                k = _last_mark(stack, path, pos)
                items, stack[k:] = stack[k + 1 :], []
                stack.append(items if name == "LIST" else tuple(items))
            elif name in _TUPLES:
                n = _TUPLES[name]
                if len(stack) < n or any(x is _MARK for x in stack[len(stack) - n :]):
                    raise _refuse(path, f"malformed stream at byte {pos}")
                items = stack[len(stack) - n :] if n else []
                del stack[len(stack) - n :]
                stack.append(tuple(items))
            elif name in ("APPEND", "APPENDS"):
                if name == "APPEND":
                    if len(stack) < 2:
                        raise _refuse(path, f"malformed stream at byte {pos}")
                    item = stack.pop()
                    items = [item]
                else:
                    k = _last_mark(stack, path, pos)
                    items, stack[k:] = stack[k + 1 :], []
                if not stack or not isinstance(stack[-1], list):
                    raise _refuse(path, f"append to a non-list at byte {pos}")
                stack[-1].extend(items)  # type: ignore[union-attr]
            elif name in _MEMO_PUT:
                if not stack or stack[-1] is _MARK:
                    raise _refuse(path, f"malformed stream at byte {pos}")
                memo[len(memo) if name == "MEMOIZE" else int(arg)] = stack[-1]
            elif name in _MEMO_GET:
                if int(arg) not in memo:
                    raise _refuse(path, f"memo reference {arg} undefined at byte {pos}")
                stack.append(memo[int(arg)])
            elif name == "POP":
                if not stack:
                    raise _refuse(path, f"malformed stream at byte {pos}")
                stack.pop()
            else:
                raise _refuse(path, f"opcode {name} at byte {pos} is not allowed here")
    except ValueError as e:  # genops: truncated or unknown opcode
        raise _refuse(path, f"damaged or truncated pickle: {e}") from None
    raise _refuse(path, "the pickle ends without STOP; the file is truncated")


def _last_mark(stack: list[object], path: Path, pos: int) -> int:
    for k in range(len(stack) - 1, -1, -1):
        if stack[k] is _MARK:
            return k
    raise _refuse(path, f"malformed stream at byte {pos} (no mark)")


def read_bin(path: str | Path) -> VerificationBin:
    """Parse an insightface verification `.bin` safely (see the module docstring).

    Raises DataError (one line naming the file) if it is missing, truncated, holds anything
    but the two expected containers, or the image count is not twice the pair count.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: .bin file not found")
    data = path.read_bytes()
    if not data:
        raise DataError(f"{path}: file is empty")
    obj = _walk(data, path)
    if not isinstance(obj, tuple | list) or len(obj) != 2:
        raise _refuse(path, "the top level is not a pair (bins, issame_list)")
    bins, issame = obj
    if not isinstance(bins, list | tuple) or not all(isinstance(b, bytes) for b in bins):
        raise _refuse(path, "the first item is not a list of image bytes")
    if not isinstance(issame, list | tuple) or not all(isinstance(s, bool) for s in issame):
        raise _refuse(path, "the second item is not a list of booleans")
    if not issame:
        raise DataError(f"{path}: no pairs in the file")
    if len(bins) != 2 * len(issame):
        raise DataError(f"{path}: {len(bins)} images for {len(issame)} pairs; a .bin holds two "
                        "images per pair — the file is damaged or not a verification set")
    if (n_same := sum(issame)) in (0, len(issame)):
        raise DataError(f"{path}: all {len(issame)} pairs are "
                        f"{'same' if n_same else 'different'}; need both kinds")
    return VerificationBin(path, list(bins), np.asarray(issame, dtype=bool))


def write_bin(path: str | Path, images: list[bytes], same: np.ndarray) -> Path:
    """Write `(images, list(same))` as insightface does (highest pickle protocol)."""
    path = Path(path)
    same_list = [bool(s) for s in np.asarray(same).ravel()]
    if len(images) != 2 * len(same_list):
        raise DataError(f"{path}: {len(images)} images for {len(same_list)} pairs; need two "
                        "per pair")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(([bytes(b) for b in images], same_list), f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)
    return path
