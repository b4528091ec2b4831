"""URL head on SFace-shaped features: a tiny run retrains bit for bit, saves and reloads
(weights_only) to the same outputs, and refuses another backbone's features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facerank.errors import ModelFileError
from facerank.uncertainty.confidence import load_url_head, save_url_head
from facerank.uncertainty.train import Samples, train_url
from facerank.uncertainty.url import URLConfig, run_head

SFACE = "sface_2021dec_int8bq@facerank-features-1"


def _samples(n_people: int = 8, per: int = 4, seed: int = 0) -> Samples:
    """SFace-shaped samples (128-d descriptors, 1024 x 7 x 7 grids), 2 kinds."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_people, 128))
    y = np.repeat(np.arange(n_people), per)
    desc = (centres[y] + 0.3 * rng.normal(size=(len(y), 128))).astype(np.float32)
    grid = np.abs(rng.normal(size=(len(y), 1024, 7, 7))).astype(np.float16)
    kinds = np.where(np.arange(len(y)) % 2 == 0, "clean", "crop")
    var = {"occlusion": np.where(kinds == "clean", 0, 1).astype(np.int64),
           "pose": rng.integers(0, 3, len(y)).astype(np.int64)}
    return Samples(desc, grid, y.astype(np.int64), var, kinds)


def _config() -> URLConfig:
    return URLConfig(desc_dim=128, grid="l2", grid_shape=(1024, 7, 7), k=8, width=64, hidden=32,
                     variations={"occlusion": 4, "pose": 3})


def test_tiny_sface_url_run_retrains_bit_for_bit_and_reloads(tmp_path: Path) -> None:
    s = _samples()
    head, stats = train_url(s, _config(), epochs=2, batch=8, seed=3, progress=False)
    again, _ = train_url(s, _config(), epochs=2, batch=8, seed=3, progress=False)
    a, b = head.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    other, _ = train_url(s, _config(), epochs=2, batch=8, seed=4, progress=False)
    assert not all(torch.equal(a[k], other.state_dict()[k]) for k in a)  # the seed matters
    path = save_url_head(tmp_path / "url-sface.pt", head,
                         {"backbone": SFACE, "seed": 3, "command": "test"})
    loaded, meta = load_url_head(path, SFACE)  # torch.load(weights_only=True) inside
    out, out2 = run_head(head, s.desc, s.grid), run_head(loaded, s.desc, s.grid)
    assert np.array_equal(out.conf, out2.conf) and np.array_equal(out.sub, out2.sub)
    assert meta["seed"] == 3 and stats["samples"] == len(s)
    with pytest.raises(ModelFileError):
        load_url_head(path, "dlib_resnet_v1@facerank-features-1")


def test_train_vit_on_sface_refuses_unknown_variants_before_loading_data(capsys) -> None:  # noqa: ANN001
    from facerank.cli.app import main

    assert main(["train", "vit", "--backbone", "sface", "--grid", "l2", "--variants",
                 "crop,bogus"]) == 2
    assert "unknown variants ['bogus']" in capsys.readouterr().err


def test_train_vit_refuses_extra_seeds_that_are_not_integers_before_loading_data(
        capsys) -> None:  # noqa: ANN001
    from facerank.cli.app import main

    assert main(["train", "vit", "--backbone", "sface", "--extra-seeds", "2,x"]) == 2
    err = capsys.readouterr().err
    assert "--extra-seeds takes integers" in err and len(err.strip().splitlines()) == 1
