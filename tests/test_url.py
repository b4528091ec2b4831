"""URL head: loss values, Eq. 26 gradient gating, confidences, checkpoints, bad input."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facerank.errors import InputError, ModelFileError
from facerank.uncertainty.url import (
    URLConfig,
    URLHead,
    decorrelation_loss,
    identification_loss,
    match_scores,
    run_head,
    url_logits,
    variation_classifiers,
)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def test_identification_loss_hand_made_example() -> None:
    # K = 2 sub-embeddings of 2-D, C = 2 classes, one sample of class 0
    f = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, 2, 2)
    w = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],  # class 0: both sub-embeddings agree
                      [[0.0, 1.0], [0.0, 1.0]]])  # class 1: only the second agrees
    s = torch.tensor([[4.0, 2.0]])
    # a_00 = (4*1 + 2*1) / 2 = 3, a_01 = (4*0 + 2*1) / 2 = 1
    assert torch.allclose(url_logits(f, s, w), torch.tensor([[3.0, 1.0]]))
    m = 0.5
    loss = identification_loss(f, s, w, torch.tensor([0]), m)
    want = -math.log(math.exp(3 - m) / (math.exp(3 - m) + math.exp(1)))
    assert loss.item() == pytest.approx(want, rel=1e-6)
    # the margin only makes it harder
    assert identification_loss(f, s, w, torch.tensor([0]), 0.0).item() < loss.item()


def test_gradients_are_gated_by_confidence_as_in_eq26() -> None:
    torch.manual_seed(0)
    n, k, d, c = 3, 4, 5, 6
    f = _unit(torch.randn(n, k, d)).requires_grad_()
    w = _unit(torch.randn(c, k, d)).requires_grad_()
    s = torch.rand(n, k) * 10 + 0.1
    y = torch.tensor([2, 0, 5])
    m = 0.7
    loss = identification_loss(f, s, w, y, m) * n  # sum over samples, as Eq. 26 is per sample
    gf, gw = torch.autograd.grad(loss, (f, w))
    with torch.no_grad():
        a = url_logits(f, s, w) - m * F.one_hot(y, c)
        p = torch.softmax(a, 1)  # (N, C) posterior with the margin
        delta = F.one_hot(y, c).float()
        # dL/dw_j^k = sum_i s_i^k / K (p_ij - delta_ij) f_i^k
        want_w = torch.einsum("nk,nc,nkd->ckd", s / k, p - delta, f)
        # dL/df_i^k = s_i^k / K ((p_iy - 1) w_y^k + sum_{j != y} p_ij w_j^k)
        want_f = (s / k)[:, :, None] * torch.einsum("nc,ckd->nkd", p - delta, w)
    assert torch.allclose(gw, want_w, atol=1e-5)
    assert torch.allclose(gf, want_f, atol=1e-5)
    # gating: with every logit pinned at 0 (all prototypes orthogonal to f), the posterior does
    # not depend on s, so 5x the confidence of sub-embedding 2 must give it exactly 5x the
    # gradient and leave the others' gradients unchanged
    f_orth = torch.zeros(1, k, d)
    f_orth[0, :, 0] = 1.0
    w_orth = torch.zeros(c, k, d)
    w_orth[:, :, 1] = 1.0  # every prototype orthogonal to f: logits all 0 whatever s
    w_orth[0, 0, 1] = 0.0
    w_orth[0, 0, 2] = 1.0
    f_orth.requires_grad_()
    grads = []
    for scale in (1.0, 5.0):
        s_o = torch.ones(1, k)
        s_o[0, 2] = scale
        (g,) = torch.autograd.grad(identification_loss(f_orth, s_o, w_orth,
                                                       torch.tensor([0]), 0.0), f_orth)
        grads.append(g)
    assert torch.allclose(grads[1][0, 2], 5.0 * grads[0][0, 2], atol=1e-6)
    assert torch.allclose(grads[1][0, 1], grads[0][0, 1], atol=1e-6)
    assert grads[0][0, 2].abs().sum() > 0


def test_decorrelation_loss_values() -> None:
    cfg = URLConfig(desc_dim=8, grid=None, grid_shape=None, k=4, width=8,
                    variations={"a": 2, "b": 3})
    clfs = variation_classifiers(cfg)
    for lin in clfs.values():
        torch.nn.init.zeros_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
    f = _unit(torch.randn(5, 4, 2))
    labels = {"a": torch.tensor([0, 1, 0, 1, -1]), "b": torch.tensor([2, 1, 0, 2, 1])}
    cls, adv = decorrelation_loss(f, labels, clfs, adv_weight=2.0)
    # zero classifiers predict uniform: CE = log(classes) for both terms
    assert cls.item() == pytest.approx(math.log(2) + math.log(3), rel=1e-6)
    assert adv.item() == pytest.approx(2.0 * (math.log(2) + math.log(3)), rel=1e-6)
    # the adversarial term does not train the classifiers
    _, adv = decorrelation_loss(f.requires_grad_(), labels, clfs)
    adv.backward()
    assert all(p.grad is None for p in clfs.parameters())
    assert f.grad is not None


def _small_head(grid: bool = True) -> URLHead:
    torch.manual_seed(1)
    cfg = URLConfig(desc_dim=128, grid="l1" if grid else None,
                    grid_shape=(256, 4, 4) if grid else None, k=16, width=128, hidden=32)
    return URLHead(cfg)


def test_confidences_positive_and_score_weighting() -> None:
    head = _small_head()
    rng = np.random.default_rng(0)
    desc = rng.normal(size=(7, 128)).astype(np.float32) * 50
    grid = rng.normal(size=(7, 256, 4, 4)).astype(np.float32) * 100
    out = run_head(head, desc, grid)
    assert out.sub.shape == (7, 16, 8) and out.conf.shape == (7, 16)
    assert (out.conf > 0).all() and np.isfinite(out.conf).all()
    assert np.allclose(np.linalg.norm(out.sub, axis=2), 1, atol=1e-5)
    assert np.allclose(out.face, out.conf.mean(axis=1))
    sc = match_scores(out.sub, out.conf, out.sub, out.conf)
    assert np.allclose(np.diag(sc), 1, atol=1e-5)
    # the score is the confidence-weighted mean of the per-sub-embedding cosines
    cos = np.einsum("kd,kd->k", out.sub[0], out.sub[1])
    wts = out.conf[0] * out.conf[1]
    assert sc[0, 1] == pytest.approx(float((wts * cos).sum() / wts.sum()), rel=1e-5)


def test_bad_input_is_refused_with_one_line() -> None:
    head = _small_head()
    grid = np.zeros((2, 256, 4, 4), np.float32)
    with pytest.raises(InputError, match=r"\(N, 128\)"):
        run_head(head, np.zeros((2, 512), np.float32), grid)
    with pytest.raises(InputError, match="grid 'l1'"):
        run_head(head, np.zeros((2, 128), np.float32), np.zeros((2, 128, 8, 8)))
    with pytest.raises(InputError, match="does not have|do not have"):
        run_head(head, np.zeros((2, 128), np.float32), None)
    bad = np.ones((2, 128), np.float32)
    bad[1, 3] = np.nan
    with pytest.raises(InputError, match="face 1 has NaN"):
        run_head(head, bad, grid)
    with pytest.raises(InputError, match="multiple"):
        URLConfig(desc_dim=128, k=16, width=100)


def test_save_load_identical_and_refusals(tmp_path) -> None:
    from facerank.uncertainty.confidence import load_url_head, save_url_head

    head = _small_head()
    path = save_url_head(tmp_path / "u", head, {"backbone": "bb", "reference_confidence": 3.0})
    loaded, meta = load_url_head(path, backbone="bb")
    rng = np.random.default_rng(2)
    desc = rng.normal(size=(3, 128)).astype(np.float32)
    grid = rng.normal(size=(3, 256, 4, 4)).astype(np.float32)
    a, b = run_head(head, desc, grid), run_head(loaded, desc, grid)
    assert np.array_equal(a.sub, b.sub) and np.array_equal(a.conf, b.conf)
    assert meta["reference_confidence"] == 3.0
    with pytest.raises(ModelFileError, match="backbone"):
        load_url_head(path, backbone="other")
    # a config that does not match the weights
    js = tmp_path / "u.json"
    cfg = json.loads(js.read_text())
    cfg["config"]["width"] = 256
    js.write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="shape"):
        load_url_head(path)
    cfg["config"]["width"] = 100  # not a multiple of K: refused as a model file problem
    js.write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="multiple"):
        load_url_head(path)
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ModelFileError, match="readable"):
        load_url_head(path)


def test_training_lowers_the_loss_on_real_lfw(lfw_root, extractor) -> None:
    """6 people x 3 images, clean + cropped + down-scaled chips: 6 short epochs (seconds)."""
    from facerank.eval.occlusion import occlude
    from facerank.face.align.dlib_chip import extract_chip
    from facerank.face.imageio import load_image
    from facerank.uncertainty.train import Samples, train_url
    from facerank.uncertainty.variations import labels_for, pose_bins

    people = ["Ariel_Sharon", "Colin_Powell", "Donald_Rumsfeld", "George_W_Bush",
              "Gerhard_Schroeder", "Tony_Blair"]
    paths = [p for name in people
             for p in sorted((lfw_root / "images" / name).glob("*.jpg"))[:3]]
    fs = extractor.extract_paths(paths, progress=False)
    assert len(fs) == len(paths)
    y = np.repeat(np.arange(len(people)), 3)
    chips = np.stack([extract_chip(load_image(p), fs.landmarks5[i])
                      for i, p in enumerate(paths)])
    pose = pose_bins(fs.chip_landmarks68)
    desc, grids, kinds = [fs.descriptors], [fs.grids["l1"]], ["clean"] * len(y)
    for kind in ("crop", "lowres"):
        d, g = extractor.embed_chips(occlude(kind, chips, None, seed=1))
        desc.append(d)
        grids.append(g["l1"].astype(np.float16))
        kinds += [kind] * len(y)
    var = {}
    for kind in ("clean", "crop", "lowres"):
        for name, lab in labels_for(kind, pose).items():
            var.setdefault(name, []).append(lab)
    samples = Samples(np.concatenate(desc).astype(np.float32), np.concatenate(grids),
                      np.tile(y, 3), {k: np.concatenate(v) for k, v in var.items()},
                      np.array(kinds))
    cfg = URLConfig(desc_dim=128, grid="l1", grid_shape=(256, 4, 4), k=16, width=128,
                    hidden=64)
    t0 = time.perf_counter()
    head, stats = train_url(samples, cfg, epochs=6, batch=16, seed=0, progress=False)
    assert time.perf_counter() - t0 < 20
    loss = stats["history"]["identification"]
    assert loss[-1] < 0.7 * loss[0], loss
    out = run_head(head, samples.desc, samples.grid)
    assert (out.conf > 0).all()
    # the same seed gives the same head
    head2, _ = train_url(samples, cfg, epochs=6, batch=16, seed=0, progress=False)
    assert np.array_equal(run_head(head2, samples.desc, samples.grid).conf, out.conf)


def test_quality_edits_are_seeded_and_degrade() -> None:
    from facerank.eval.occlusion import occlude

    rng = np.random.default_rng(0)
    base = cv2_smooth(rng.integers(0, 255, (3, 150, 150, 3), dtype=np.uint8))
    for kind in ("lowres", "lowres24", "blur", "jpeg"):
        a = occlude(kind, base, None, seed=0, ids=["a", "b", "c"])
        assert a.shape == base.shape and a.dtype == np.uint8
        assert np.array_equal(a, occlude(kind, base, None, seed=0, ids=["a", "b", "c"]))
        assert not np.array_equal(a, base)
        # fine detail is lost: less high-frequency energy than the original
        assert np.abs(np.diff(a.astype(float), axis=2)).mean() < \
            np.abs(np.diff(base.astype(float), axis=2)).mean()


def cv2_smooth(x: np.ndarray) -> np.ndarray:
    """Mildly smoothed noise: an image with detail at every scale (uint8, same shape)."""
    import cv2

    return np.stack([cv2.GaussianBlur(c, (0, 0), 0.7) for c in x])


def test_train_cli_refuses_bad_options_before_loading_data(capsys) -> None:
    from facerank.cli.app import main

    assert main(["train", "url", "--edits", "crop,bogus"]) == 2
    assert "unknown edit(s) ['bogus']" in capsys.readouterr().err
