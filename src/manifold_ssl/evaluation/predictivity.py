"""Neural predictivity in the Brain-Score manner (Yerxa App. K).

Cross-validated linear (ridge) regression from model features to recorded responses: for each
split, stimuli are divided into train and held-out sets, ridge regression is fitted on the
train stimuli (its penalty chosen by inner cross-validation, scikit-learn's ``RidgeCV``), and the
Pearson correlation between predicted and recorded responses on the held-out stimuli is computed
per neuron. The score of a split is the median over neurons; the result is the mean and
standard error over splits. Users bring their own arrays: nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["neural_predictivity"]


def _pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    denom = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    return np.where(denom > 0, (a * b).sum(axis=0) / np.where(denom > 0, denom, 1), 0.0)


def neural_predictivity(
    features: object,
    responses: object,
    n_splits: int = 10,
    test_fraction: float = 0.1,
    alphas: Sequence[float] = tuple(np.logspace(-3, 5, 9)),
    seed: int = 0,
) -> dict[str, object]:
    """Predictivity of ``responses`` (S stimuli, n neurons) from ``features`` (S, F).

    Returns ``score`` (mean over splits of the median held-out Pearson r), ``sem`` (standard
    error over splits), ``split_scores`` and ``per_neuron`` (mean r of each neuron over splits).
    """
    from sklearn.linear_model import RidgeCV

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(responses, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"features (S, F) and responses (S, n) must share S, got {x.shape}, {y.shape}"
        )
    if x.shape[0] < 10:
        raise ValueError(f"need at least 10 stimuli, got {x.shape[0]}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("features and responses must be finite")
    if not 0 < test_fraction < 1 or n_splits < 1:
        raise ValueError("test_fraction must be in (0, 1) and n_splits >= 1")
    rng = np.random.default_rng(seed)
    s = x.shape[0]
    n_test = max(2, round(test_fraction * s))
    scores, per_neuron = [], []
    for _ in range(n_splits):
        perm = rng.permutation(s)
        test, train = perm[:n_test], perm[n_test:]
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-12
        model = RidgeCV(alphas=list(alphas)).fit((x[train] - mu) / sd, y[train])
        r = _pearson_columns(model.predict((x[test] - mu) / sd), y[test])
        scores.append(float(np.median(r)))
        per_neuron.append(r)
    sc = np.array(scores)
    return {
        "score": float(sc.mean()),
        "sem": float(sc.std(ddof=1) / np.sqrt(len(sc))) if len(sc) > 1 else 0.0,
        "split_scores": sc.tolist(),
        "per_neuron": np.mean(per_neuron, axis=0).tolist(),
    }
