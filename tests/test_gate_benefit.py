"""The benefit gate (`facerank.train.gate`): extra inputs, threshold choice, abstaining."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from facerank.errors import InputError, ModelFileError
from facerank.rerank.emd.reranker import Stage2EMD
from facerank.rerank.gate import EXTRA_FEATURES, FEATURES, QualityGate, extra_features
from facerank.train.gate import (
    ABSTAIN,
    GATE_FEATURES,
    GateGroup,
    choose_threshold,
    fit_benefit_gate,
)

from .test_gate import _lists, _queries


def _group(name: str, n: int, helps_when: float, seed: int, hurt_share: float) -> GateGroup:
    """Column 0 of x is a signal: EMD helps queries with x0 > helps_when; it hurts a
    `hurt_share` of the others (at random)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(GATE_FEATURES)))
    helps = x[:, 0] > helps_when
    hurts = ~helps & (rng.random(n) < hurt_share)
    s1 = ~helps  # Stage 1 right unless EMD is the one that helps
    s2 = ~hurts
    return GateGroup(name, rng.random(n) < 0.5, np.arange(n) // 2, s1, s2, x)


def test_extra_features_margin_and_capped_detector_score() -> None:
    cos = np.array([[0.9, 0.5, 0.4], [0.6, 0.55, 0.1]])
    x = extra_features(EXTRA_FEATURES, cos, np.array([0.8, 2.5]))
    np.testing.assert_allclose(x, [[0.4, 0.8], [0.05, 1.0]])
    assert extra_features((), cos, np.ones(2)).shape == (2, 0)
    with pytest.raises(InputError, match="unknown gate feature"):
        extra_features(("url",), cos, np.ones(2))
    with pytest.raises(InputError, match="detector scores"):
        extra_features(EXTRA_FEATURES, cos, np.ones(3))


def test_gate_with_extras_round_trips_and_reads_them_inside_stage2(tmp_path: Path) -> None:
    groups = [_group("a", 400, 1.0, 0, 0.02), _group("b", 400, 3.0, 1, 0.3)]
    gate = fit_benefit_gate(groups, meta={"backbone": "sface_2021dec_int8bq"})
    assert gate.extras == EXTRA_FEATURES and len(gate.coef) == len(GATE_FEATURES)
    again = QualityGate.load(gate.save(tmp_path / "g.json"))
    np.testing.assert_allclose(again.probability(groups[0].x), gate.probability(groups[0].x))
    # inside EMD the gate's inputs gain its two extra columns
    q = _queries(6, True, 0)
    cos, emd = _lists(6, True, 0)
    rr = Stage2EMD(backbone="sface", gate=again)
    assert rr.gate_features(q, cos, emd).shape == (6, len(GATE_FEATURES))
    assert Stage2EMD(backbone="sface").gate_features(q, cos, emd).shape == (6, len(FEATURES))
    raw = json.loads((tmp_path / "g.json").read_text())
    raw["meta"]["features"] = [*FEATURES, "made_up"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(ModelFileError, match="retrain"):
        QualityGate.load(bad)


def test_threshold_sends_where_emd_helps_and_never_loses_on_the_fitting_groups() -> None:
    groups = [_group("helps", 600, 1.0, 2, 0.0), _group("mixed", 600, 2.0, 3, 0.2)]
    gate = fit_benefit_gate(groups)
    assert not gate.meta["abstains"] and gate.threshold < ABSTAIN
    for g in groups:
        s1, gated = g.p_at_1(gate.use_stage2(g.x))
        assert gated >= s1  # the rule: no fitting group loses
    held = _group("helps", 600, 1.0, 4, 0.0)  # unseen draws of the same kind
    s1, gated = held.p_at_1(gate.use_stage2(held.x))
    assert gated > s1 + 5


def test_gate_abstains_when_emd_only_hurts_where_it_is_sent() -> None:
    # EMD helps only in a group where it also hurts more than it helps: no threshold gains
    rng = np.random.default_rng(5)
    n = 500
    x = rng.normal(size=(n, len(GATE_FEATURES)))
    helps = rng.random(n) < 0.05
    hurts = ~helps & (rng.random(n) < 0.2)
    g = GateGroup("bad", np.ones(n, bool), np.arange(n) // 2, ~helps, ~hurts, x)
    gate = fit_benefit_gate([g])
    assert gate.meta["abstains"] and gate.threshold == ABSTAIN
    assert not gate.use_stage2(x).any()
    # a score that sends only queries EMD breaks never qualifies
    assert choose_threshold([(hurts & ~helps).astype(float)], [g]) == (ABSTAIN, 0.0)
    assert choose_threshold([helps.astype(float)], [g])[1] > 0


def test_fit_needs_both_outcomes() -> None:
    g = _group("only-helps", 200, 1.0, 6, 0.0)
    with pytest.raises(InputError, match="fixed and queries it broke"):
        fit_benefit_gate([g])


def test_train_gate_cli_refuses_bad_sizes_before_loading_data(capsys) -> None:  # noqa: ANN001
    from facerank.cli.app import main

    assert main(["train", "gate", "--n", "5"]) == 2
    assert "--n and --protocol-limit must be at least 10" in capsys.readouterr().err


def test_a_face_vit_gate_is_refused_unless_the_vit_never_saw_the_fitting_people(
        capsys) -> None:  # noqa: ANN001
    from facerank.cli.app import main
    from facerank.rerank.vit.reranker import FAST_CHECKPOINT

    # trained on all of identity half 1 (A): no unseen people there to fit its gate on
    assert main(["train", "gate", "--backbone", "dlib", "--checkpoint",
                 str(FAST_CHECKPOINT)]) == 2
    err = capsys.readouterr().err
    assert "never saw" in err and "--subfold 1" in err and len(err.strip().splitlines()) == 1


def test_a_face_vit_benefit_gate_is_used_beside_its_checkpoint_and_only_there(
        tmp_path: Path) -> None:
    import hashlib
    import shutil

    from facerank.rerank.vit.reranker import (
        FAST_CHECKPOINT,
        Stage2ViT,
        benefit_gate_path,
    )

    ckpt = tmp_path / "v.pt"
    shutil.copy(FAST_CHECKPOINT, ckpt)
    shutil.copy(FAST_CHECKPOINT.with_suffix(".json"), ckpt.with_suffix(".json"))
    stored = Stage2ViT.load(ckpt, gate="auto").gate  # the clean-vs-occluded gate it was made with
    assert stored is not None and "features" in stored.meta
    gate = gate_for_test(meta={"stage2": "vit", "checkpoint_sha256":
                               hashlib.sha256(ckpt.read_bytes()).hexdigest()})
    gate.save(benefit_gate_path(ckpt))
    used = Stage2ViT.load(ckpt, gate="auto").gate
    assert used is not None and used.digest() == gate.digest() != stored.digest()
    assert Stage2ViT.load(ckpt, gate=None).gate is None
    # a gate fitted for other weights is refused in one line, not silently used
    gate.meta["checkpoint_sha256"] = "0" * 64
    gate.save(benefit_gate_path(ckpt))
    with pytest.raises(ModelFileError, match="another Face-ViT checkpoint") as e:
        Stage2ViT.load(ckpt, gate="auto")
    assert "\n" not in str(e.value)


def test_score_group_runs_any_ungated_stage2_and_refuses_a_gated_one(tmp_path: Path,
                                                                     monkeypatch) -> None:  # noqa: ANN001
    from facerank.train.gate import score_group, stage2_key

    monkeypatch.setenv("FACERANK_CACHE", str(tmp_path))
    q, g = _queries(5, True, 0), _queries(30, False, 1)
    labels = np.arange(30) % 10

    class Fixed(Stage2EMD):  # EMD's blend and gate inputs; scores that favour candidate 3
        def topk_scores(self, queries, gallery, cand, progress=False):  # noqa: ANN001, ANN201
            return (labels[cand] == 3).astype(np.float32)

    rr = Fixed(backbone="sface", alpha=0.9, k=30)  # every gallery face is a candidate
    got = score_group("t", q, np.full(5, 3), g, labels, np.full(5, -1), np.ones(5, bool), rr)
    assert got.x.shape == (5, len(GATE_FEATURES)) and got.s2_ok.all()
    assert stage2_key(rr) == "sface-l2-apc"
    with pytest.raises(InputError, match="ungated"):
        score_group("t", q, np.full(5, 3), g, labels, np.full(5, -1), np.ones(5, bool),
                    Stage2EMD(backbone="sface", gate=gate_for_test()))


def gate_for_test(meta: dict | None = None) -> QualityGate:
    """A gate that sends: fitted on two groups where EMD helps some queries."""
    return fit_benefit_gate([_group("a", 400, 1.0, 0, 0.02), _group("b", 400, 3.0, 1, 0.3)],
                            meta=meta)


def test_the_pre_gate_passes_every_query_the_gate_sends_where_it_was_fitted() -> None:
    from facerank.train.gate import PRE_COLUMNS, fit_pre_gate, report

    groups = [_group("helps", 600, 1.0, 2, 0.0), _group("mixed", 600, 2.0, 3, 0.2)]
    for g in groups:  # make the signal visible before Stage 2: a pre-gate column carries it
        g.x[:, PRE_COLUMNS[0]] = g.x[:, 0]
    gate = fit_benefit_gate(groups)
    pre = fit_pre_gate(gate, groups)
    assert pre is not None and pre.for_gate == gate.digest()
    for g, row in zip(groups, report(gate, groups, pre), strict=True):
        sent = gate.use_stage2(g.x)
        assert pre.maybe_stage2(g.x[:, PRE_COLUMNS])[sent].all()
        assert row["p1_gated"] == row["p1_gate_alone"] and row["pre_passed"] < 1.0
    abstains = replace(gate, threshold=ABSTAIN)
    assert fit_pre_gate(abstains, groups) is None


def test_train_gate_cli_refuses_an_unwritable_report_before_any_work(tmp_path: Path,
                                                                      capsys) -> None:  # noqa: ANN001
    from facerank.cli.app import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "gate", "--report", str(blocker / "sub" / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "cannot write there" in err and len(err.strip().splitlines()) == 1
