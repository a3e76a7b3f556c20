"""The quality predictor: the paper's MLP (appendix B.1) and its ablations, feature rows, training.

Architectures (``ARCHS``): ``mlp32`` is B.1 verbatim (64 -> 32 -> 16 -> 1, ReLU, dropout 0.1, sigmoid);
``mlp128`` the same class with hidden_dim=128 (64 -> 128 -> 64 -> 1); ``linear`` is 64 -> 1 + sigmoid
(section 10.1's ablations). Training follows C.3: Adam lr 1e-3, batch 64, up to 50 epochs, early stopping
(patience 5 on the log-loss of 15% of the fit prompts, held out), binary cross-entropy. One addition: the
network trains on z-scored features and the scaling is then folded into its first layer (the returned
model is still the plain architecture on raw features). Which items fit, calibrate and test the predictor
is ``assign_roles``'s business: by default not the stage models' own training prompts.

Feature modes (``MODES``): ``output_aware`` rows are ``stage_features`` (the stage's answer is known),
``prompt_only`` rows are ``ex_ante_features`` (the estimate for a stage not yet run), ``paper_b2`` keeps
only the paper's nine B.2 slots of the prompt-only rows (for reproducing the paper's predictor).
The served network (``ModeSwitch``) holds one output-aware and one prompt-only network and routes each
row by its ``ex_ante`` slot, so one ONNX file answers both questions the stopping rule asks.

Deterministic for a given seed when torch runs on one thread (the training script sets it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from optistop.features import EX_ANTE_SLOT, PAPER_SLOTS, ex_ante_features, stage_features
from optistop.tensors import N_FEATURES

ARCHS: dict[str, int | None] = {"linear": None, "mlp32": 32, "mlp128": 128}  # hidden_dim
MODES: tuple[str, ...] = ("paper_b2", "prompt_only", "output_aware")
SPLITS: tuple[str, ...] = ("train", "val", "test")


class QualityMLP(nn.Module):
    """Appendix B.1 verbatim (the paper's ``QualityPredictor``): (B, 64) -> (B, 1) P(answer correct)."""

    def __init__(self, input_dim: int = N_FEATURES, hidden_dim: int = 32) -> None:
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(hidden_dim, hidden_dim // 2),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(hidden_dim // 2, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class LinearPredictor(nn.Module):
    """Logistic regression on the 64 features (section 10.1's "linear model")."""

    def __init__(self, input_dim: int = N_FEATURES) -> None:
        super().__init__()
        self.network = nn.Sequential(nn.Linear(input_dim, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class ModeSwitch(nn.Module):
    """(B, 64) -> (B, 1): ``ex_ante`` rows go to the prompt-only net, the others to the output-aware net."""

    def __init__(self, post_hoc: nn.Module, ex_ante: nn.Module) -> None:
        super().__init__()
        self.post_hoc = post_hoc
        self.ex_ante = ex_ante

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flag = x[:, EX_ANTE_SLOT:EX_ANTE_SLOT + 1] > 0.5   # (B, 1)
        return torch.where(flag, self.ex_ante(x), self.post_hoc(x))


def build(arch: str) -> nn.Module:
    if arch not in ARCHS:
        raise ValueError(f"unknown predictor architecture {arch!r}; valid: {', '.join(ARCHS)}")
    hidden = ARCHS[arch]
    return LinearPredictor() if hidden is None else QualityMLP(hidden_dim=hidden)


# --- feature rows from collected records ----------------------------------------------------------------


@dataclass
class Rows:
    """One row per (item, stage): features (N, 64) float32, label (N,), stage (N,), item index (N,)."""

    x: np.ndarray
    y: np.ndarray
    stage: np.ndarray
    item: np.ndarray

    def where(self, mask: np.ndarray) -> Rows:
        return Rows(self.x[mask], self.y[mask], self.stage[mask], self.item[mask])


def features_for(record: dict[str, Any], stage: int, n_stages: int, mode: str) -> np.ndarray:
    """The (64,) feature vector of one collected record at ``stage`` in feature ``mode``."""
    if mode == "output_aware":
        st = record["stages"][stage]
        return stage_features(record["prompt"], st["response"], st["logprobs"], st["hit_max_tokens"],
                              stage, n_stages)
    v = ex_ante_features(record["prompt"], stage, n_stages)
    if mode == "paper_b2":
        keep = np.zeros_like(v)
        keep[list(PAPER_SLOTS)] = v[list(PAPER_SLOTS)]
        return keep
    if mode == "prompt_only":
        return v
    raise ValueError(f"unknown feature mode {mode!r}; valid: {', '.join(MODES)}")


def build_rows(records: Sequence[dict[str, Any]], mode: str) -> Rows:
    xs, ys, stages, items = [], [], [], []
    for i, rec in enumerate(records):
        n = len(rec["stages"])
        for s in range(n):
            xs.append(features_for(rec, s, n, mode))
            ys.append(float(bool(rec["stages"][s]["correct"])))
            stages.append(s)
            items.append(i)
    return Rows(np.asarray(xs, dtype=np.float32).reshape(-1, N_FEATURES), np.asarray(ys, dtype=np.float32),
                np.asarray(stages, dtype=np.int64), np.asarray(items, dtype=np.int64))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def data_sha256(records: Iterable[dict[str, Any]]) -> str:
    """Hash of what labels and features depend on (latency and other timing fields excluded)."""
    h = hashlib.sha256()
    for rec in records:
        stages = [{k: v for k, v in st.items() if k not in ("latency_ms", "batch_size")} for st in rec["stages"]]
        body = {k: v for k, v in rec.items() if k != "stages"} | {"stages": stages}
        h.update(json.dumps(body, sort_keys=True, ensure_ascii=True).encode())
        h.update(b"\n")
    return h.hexdigest()


# --- training -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3
    batch_size: int = 64
    max_epochs: int = 50
    patience: int = 5
    holdout: float = 0.15   # share of the fit prompts held out for early stopping
    seed: int = 0
    standardize: bool = True  # train on z-scored features, then fold the scaling into the first layer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prompt_bucket(prompt: str, salt: str) -> float:
    """A stable number in [0, 1) per (prompt, salt): splits by prompt keep duplicates on one side."""
    digest = hashlib.sha256(f"{salt}/{prompt}".encode("utf-8", errors="replace")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_roles(records: Sequence[dict[str, Any]], fit_on: str = "val", cal_share: float = 1 / 3,
                 seed: int = 0) -> list[str]:
    """Each record's role for the predictor: "fit", "calibration", "test" or "unused".

    The stage models were trained on the suite's train split, so their outputs on those prompts are
    those of memorized items, unlike at serving time. Default (``fit_on="val"``): the val split's prompts
    are divided by prompt hash into fit (2/3) and calibration (1/3), the train split is unused and test
    is test. ``fit_on="train"``: fit on train, calibrate on all of val (the naive protocol, for comparison).
    """
    if fit_on not in ("val", "train"):
        raise ValueError(f"fit_on must be 'val' or 'train', got {fit_on!r}")
    roles = []
    for rec in records:
        split = rec["split"]
        if split == "test":
            roles.append("test")
        elif fit_on == "train":
            roles.append("fit" if split == "train" else "calibration")
        elif split == "val":
            roles.append("calibration" if prompt_bucket(rec["prompt"], f"cal/{seed}") < cal_share else "fit")
        else:
            roles.append("unused")
    return roles


def early_stopping_mask(records: Sequence[dict[str, Any]], share: float, seed: int) -> np.ndarray:
    """(n_records,) bool: records whose prompt is held out for early stopping (by prompt hash)."""
    return np.array([prompt_bucket(r["prompt"], f"es/{seed}") < share for r in records], dtype=bool)


def _bce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        p = model(x)[:, 0].clamp(1e-7, 1 - 1e-7)
        return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


STD_FLOOR = 0.1  # features are O(1) by design; a nearly constant slot must not get a huge weight


def standardization(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-slot mean and std (floored at STD_FLOOR) of training features (N, 64)."""
    return x.mean(axis=0), np.maximum(x.std(axis=0), STD_FLOOR)


def fold_standardization(model: nn.Module, mean: np.ndarray, std: np.ndarray) -> None:
    """Make ``model`` take raw features: W' = W / std, b' = b - W' @ mean (first Linear layer, in place)."""
    first = model.network[0]
    with torch.no_grad():
        w = first.weight.double() / torch.from_numpy(std).double()          # (H, 64)
        b = first.bias.double() - w @ torch.from_numpy(mean).double()       # (H,)
        first.weight.copy_(w.float())
        first.bias.copy_(b.float())


def train(arch: str, fit: Rows, stop: Rows, cfg: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Train one predictor on ``fit`` with early stopping on ``stop``; returns (model in eval mode, log).

    With ``cfg.standardize`` the network trains on z-scored features and the scaling is then folded into
    its first layer, so the returned model is the plain architecture applied to raw features.
    """
    torch.manual_seed(cfg.seed)
    model = build(arch)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = nn.BCELoss()
    mean, std = standardization(fit.x) if cfg.standardize else (np.zeros(N_FEATURES), np.ones(N_FEATURES))
    z = lambda a: torch.from_numpy(((a - mean) / std).astype(np.float32))
    x, y = z(fit.x), torch.from_numpy(fit.y)
    xs, ys = z(stop.x), torch.from_numpy(stop.y)
    gen = torch.Generator().manual_seed(cfg.seed)
    best_loss, best_state, best_epoch, waited, epoch = float("inf"), None, 0, 0, 0
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            loss = loss_fn(model(x[idx])[:, 0], y[idx])
            loss.backward()
            opt.step()
        val = _bce(model, xs, ys)
        if val < best_loss - 1e-6:
            best_loss, best_epoch, waited = val, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    if cfg.standardize:
        fold_standardization(model, mean, std)
    model.eval()
    return model, {"epochs_run": epoch, "best_epoch": best_epoch, "early_stop_logloss": round(best_loss, 6)}


def predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Raw (uncalibrated) probabilities (N,) float64 of a torch predictor on (N, 64) features."""
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))[:, 0].double().numpy()
