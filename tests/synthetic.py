"""Synthetic cascade outcomes shared by the policy, replay and report tests (one generator, one meaning)."""

from __future__ import annotations

import numpy as np

SKILL = np.array([-0.5, 0.8, 1.8])   # stage k is right with probability sigmoid(SKILL[k] - difficulty)


def latent(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(difficulty (n,), P(correct) (n, 3), correct, post-hoc confidence, ex-ante estimate): a latent
    difficulty shared by every stage (so stages' outcomes correlate) and noisy but informative scores."""
    rng = np.random.default_rng(seed)
    d = rng.normal(0, 1.5, n)
    pr = 1 / (1 + np.exp(-(SKILL[None, :] - d[:, None])))
    y = rng.random(pr.shape) < pr
    post = np.clip(0.6 * pr + 0.4 * y + rng.normal(0, 0.1, pr.shape), 0.01, 0.99)
    ex = np.clip(pr + rng.normal(0, 0.1, pr.shape), 0.01, 0.99)
    return d, pr, y, post, ex
