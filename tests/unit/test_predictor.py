"""Predictor maths: metrics, calibration, the paper's architectures, deterministic training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optistop import calibration
from optistop.features import EX_ANTE_SLOT
from optistop.offline import stats
from optistop.predictor.model import (
    ModeSwitch,
    QualityMLP,
    Rows,
    TrainConfig,
    assign_roles,
    build,
    data_sha256,
    early_stopping_mask,
    fold_standardization,
    predict,
    train,
)

# --- metrics, on numbers worked out by hand ------------------------------------------------------------


def test_auroc_hand_worked() -> None:
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs won (0.35>0.1), (0.8>0.1), (0.8>0.4) -> 3 of 4
    assert stats.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert stats.auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)          # a tie counts one half
    assert stats.auroc([1, 0, 1], [0.9, 0.5, 0.5]) == pytest.approx(0.75)
    assert stats.auroc([1, 1], [0.2, 0.3]) is None                         # one class: undefined
    with pytest.raises(ValueError, match="differ in length"):
        stats.auroc([0, 1], [0.5])


def test_brier_and_ece_hand_worked() -> None:
    y, p = np.array([1, 0, 1, 1]), np.array([0.9, 0.2, 0.6, 0.65])
    assert stats.brier(y, p) == pytest.approx((0.01 + 0.04 + 0.16 + 0.1225) / 4)
    # bins: 0.2 -> bin 2 (gap 0.2), 0.6 and 0.65 -> bin 6 (mean 0.625, acc 1: gap 0.375), 0.9 -> bin 9 (0.1)
    assert stats.ece(y, p) == pytest.approx(0.25 * 0.2 + 0.5 * 0.375 + 0.25 * 0.1)
    assert stats.ece([1], [1.0]) == 0.0                                    # 1.0 lands in the last bin
    assert stats.brier([], []) is None and stats.ece([], []) is None
    s = stats.summary(y, p)
    assert set(s) == {"auroc", "brier", "ece", "n", "positives"} and s["n"] == 4 and s["positives"] == 3


# --- calibration ---------------------------------------------------------------------------------------


def test_isotonic_pools_violators() -> None:
    cal = calibration.fit("isotonic", np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1]))
    # (0.2, 1) and (0.3, 0) violate monotonicity and pool to 0.5
    assert cal == {"method": "isotonic", "x": [0.1, 0.2, 0.3, 0.4], "y": [0.0, 0.5, 0.5, 1.0]}
    out = calibration.apply(cal, np.array([0.0, 0.25, 0.35, 1.0]))
    np.testing.assert_allclose(out, [calibration.P_MIN, 0.5, 0.75, 1 - calibration.P_MIN])


def test_platt_recovers_a_known_map() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, 20_000)
    true = 1 / (1 + np.exp(-(2.0 * np.log(p / (1 - p)) - 1.0)))
    y = (rng.uniform(size=p.size) < true).astype(float)
    cal = calibration.fit("platt", p, y)
    assert cal["a"] == pytest.approx(2.0, abs=0.1) and cal["b"] == pytest.approx(-1.0, abs=0.1)
    t = calibration.fit("temperature", p, (rng.uniform(size=p.size) < p).astype(float))
    assert t["t"] == pytest.approx(1.0, abs=0.05)


def test_select_prefers_simple_when_already_calibrated_and_fixes_overconfidence() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0.01, 0.99, 4000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    cal, cv = calibration.select(p, y)
    assert set(cv) == set(calibration.METHODS)
    assert stats.ece(y, calibration.apply(cal, p)) < 0.03
    over = 1 / (1 + np.exp(-3 * np.log(p / (1 - p))))      # same ranking, far too confident
    cal2, cv2 = calibration.select(over, y)
    assert cal2["method"] != "identity" and cv2[cal2["method"]] < cv2["identity"]
    assert stats.ece(y, calibration.apply(cal2, over)) < stats.ece(y, over) / 2
    assert calibration.select(p[:5], y[:5])[0] == {"method": "identity"}            # too few
    assert calibration.select(p, np.ones_like(p))[0] == {"method": "identity"}      # one class


def test_calibrator_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="valid methods"):
        calibration.apply({"method": "magic"}, np.array([0.5]))
    with pytest.raises(ValueError, match=r"calibration.post_hoc\[0\].*needs \['b'\]"):
        calibration.validate({"method": "platt", "a": 1.0}, "calibration.post_hoc[0]")
    with pytest.raises(ValueError, match="strictly increasing"):
        calibration.validate({"method": "isotonic", "x": [0.2, 0.1], "y": [0, 1]})
    assert calibration.validate({"method": "temperature", "t": 2.0})["t"] == 2.0


# --- architectures ---------------------------------------------------------------------------------------


def _shapes(model: torch.nn.Module) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for p in model.parameters()]


def test_paper_architectures() -> None:
    m32 = build("mlp32")
    assert isinstance(m32, QualityMLP)
    assert _shapes(m32) == [(32, 64), (32,), (16, 32), (16,), (1, 16), (1,)]          # 64 -> 32 -> 16 -> 1
    kinds = [type(m).__name__ for m in m32.network]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear", "Sigmoid"]
    assert [m.p for m in m32.network if isinstance(m, torch.nn.Dropout)] == [0.1, 0.1]
    assert _shapes(build("mlp128")) == [(128, 64), (128,), (64, 128), (64,), (1, 64), (1,)]
    assert _shapes(build("linear")) == [(1, 64), (1,)]
    with pytest.raises(ValueError, match="valid: linear, mlp32, mlp128"):
        build("mlp64")


def test_mode_switch_routes_by_the_ex_ante_slot() -> None:
    class Const(torch.nn.Module):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = value

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 1), self.value)

    x = torch.zeros(3, 64)
    x[1, EX_ANTE_SLOT] = 1.0
    out = ModeSwitch(Const(0.25), Const(0.75))(x)
    assert out.shape == (3, 1) and out[:, 0].tolist() == [0.25, 0.75, 0.25]


# --- training ----------------------------------------------------------------------------------------------


def _toy_rows(n: int, seed: int) -> Rows:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 64)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)
    return Rows(x, y, np.zeros(n, dtype=np.int64), np.arange(n))


def test_training_learns_and_is_deterministic() -> None:
    torch.set_num_threads(1)
    fit, stop, test = _toy_rows(600, 0), _toy_rows(150, 1), _toy_rows(300, 2)
    cfg = TrainConfig(max_epochs=10, seed=3)
    m1, log1 = train("mlp32", fit, stop, cfg)
    m2, log2 = train("mlp32", fit, stop, cfg)
    assert log1 == log2 and 1 <= log1["best_epoch"] <= log1["epochs_run"] <= 10
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    p = predict(m1, test.x)
    assert p.shape == (300,) and stats.auroc(test.y, p) > 0.75
    m3, _ = train("mlp32", fit, stop, TrainConfig(max_epochs=2, seed=4))
    assert not torch.equal(m3.state_dict()["network.0.weight"], m1.state_dict()["network.0.weight"])


def test_roles_keep_the_stage_models_training_prompts_out() -> None:
    recs = [{"prompt": f"{i}+{j}=", "split": split} for split in ("train", "val", "test")
            for i in range(10) for j in range(10)]
    recs += [dict(r) for r in recs[100:110]]                        # duplicates of val prompts
    roles = assign_roles(recs, "val", cal_share=1 / 3, seed=0)
    assert roles[:100] == ["unused"] * 100 and roles[200:300] == ["test"] * 100
    val = roles[100:200]
    assert set(val) == {"fit", "calibration"} and 20 < val.count("calibration") < 47
    assert roles[300:] == roles[100:110]                            # a prompt's duplicates share its role
    assert assign_roles(recs, "val", seed=0) == roles and assign_roles(recs, "val", seed=1) != roles
    naive = assign_roles(recs, "train")
    assert naive[:100] == ["fit"] * 100 and naive[100:200] == ["calibration"] * 100
    with pytest.raises(ValueError, match="fit_on"):
        assign_roles(recs, "test")
    held = early_stopping_mask(recs, 0.15, 0)
    assert 0.05 < held[:300].mean() < 0.25 and (held[300:] == held[100:110]).all()


def test_folding_the_standardization_keeps_the_function() -> None:
    torch.manual_seed(0)
    model = build("mlp32").eval()
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(50, 64)).astype(np.float32)
    mean, std = x.mean(axis=0), x.std(axis=0)
    with torch.no_grad():
        want = model(torch.from_numpy((x - mean) / std))[:, 0].numpy()
    fold_standardization(model, mean, std)
    np.testing.assert_allclose(predict(model, x), want, atol=1e-5)


def test_data_hash_ignores_timing_only() -> None:
    rec = {"id": "a", "prompt": "1+1=", "split": "train",
           "stages": [{"model": "small", "correct": True, "response": "2", "logprobs": [-0.1],
                       "latency_ms": 1.0, "batch_size": 64}]}
    faster = {**rec, "stages": [{**rec["stages"][0], "latency_ms": 0.5, "batch_size": 8}]}
    wrong = {**rec, "stages": [{**rec["stages"][0], "correct": False}]}
    assert data_sha256([rec]) == data_sha256([faster]) != data_sha256([wrong])


@pytest.mark.parametrize("cal", [
    {"method": "identity"},
    {"method": "temperature", "t": 1.7},
    {"method": "platt", "a": 0.6, "b": -1.3},
    {"method": "isotonic", "x": [0.05, 0.2, 0.21, 0.6, 0.9], "y": [0.01, 0.1, 0.4, 0.4, 0.97]},
])
def test_scalar_calibrator_is_the_array_calibrator(cal: dict) -> None:
    """The served one-score path (Python floats) computes what the array path computes, edges included."""
    p = np.concatenate([np.linspace(0.0, 1.0, 1001), [1e-9, 1 - 1e-9, 0.05, 0.2, 0.21, 0.6, 0.9],
                        np.random.default_rng(0).random(2000)])
    many, one = calibration.compiled(cal), calibration.compiled_scalar(cal)
    np.testing.assert_allclose([one(x) for x in p.tolist()], many(p), rtol=0, atol=1e-12)
