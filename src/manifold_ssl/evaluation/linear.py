"""Frozen-backbone linear probe on features extracted once.

The papers train a linear layer with SGD/LARS for 100 epochs on augmented images (Yerxa App. G,
CLAMP App. E). Adapted to CPU: features are extracted once from un-augmented images, standardised
with the training statistics, and a multinomial logistic regression is fitted by full-batch
L-BFGS for each weight decay of a grid. The weight decay is chosen on the validation split; the
test split is evaluated once, with the chosen classifier.

The grid is walked from the strongest weight decay to the weakest, each fit starting from the
previous solution (a regularisation path: neighbouring problems have neighbouring optima), and
L-BFGS stops when the gradient or the change of the loss falls below a tolerance. The features
are held in float32 and the loss and optimiser in float64 (:func:`fit_logistic`): a pure
float32 fit took 17× longer on CIFAR-10 encoder features (5.8 s against 0.33 s for 5,000 × 128
features at weight decay 0.1), its strong-Wolfe line searches stalling at float32 resolution,
while a pure float64 one doubles the cost of every pass over a 45,000 × 3,072 raw-pixel matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = ["fit_logistic", "linear_probe"]


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int = 300,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (F, C) and bias (C,) minimising mean cross-entropy + wd/2 · ‖W‖², in float64.

    The two products with ``x`` (logits and the weights' gradient) run in ``x``'s dtype; the
    logits, the loss and L-BFGS's state are float64, so a float32 ``x`` halves the cost of
    every pass over it without the float32 loss values that stall the line search. Starts from
    ``init`` or from zero (the problem is convex), so the fit is deterministic and touches no
    RNG.
    """
    f64 = torch.float64
    if init is None:
        w0 = torch.zeros(x.shape[1], num_classes, dtype=f64, device=x.device)
        b0 = torch.zeros(num_classes, dtype=f64, device=x.device)
    else:
        w0, b0 = init
    w = w0.detach().clone().requires_grad_(True)
    b = b0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = (x @ w.to(x.dtype)).to(f64) + b
        loss = F.cross_entropy(logits, y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def linear_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    weight_decays: Sequence[float] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    max_iter: int = 300,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> dict[str, object]:
    """Fit on ``train``, select the weight decay on ``val``, report ``test`` once.

    Each argument is ``(features (N, F), labels (N,))``; ``dtype`` is the precision the
    standardised features are held in. Returns the chosen weight decay, the
    validation accuracy of every candidate, and the test accuracy of the chosen one (ties go to
    the stronger weight decay).
    """
    if not weight_decays:
        raise ValueError("weight_decays must name at least one weight decay")
    xtr, ytr = train
    mean, std = xtr.mean(0, keepdim=True), xtr.std(0, keepdim=True).clamp_min(1e-6)

    def prep(x: torch.Tensor) -> torch.Tensor:
        return ((x - mean) / std).to(dtype)

    xtr_s, xval, xte = prep(xtr), prep(val[0]), prep(test[0])
    results, best, init = {}, None, None
    path = sorted(weight_decays, reverse=True)
    for wd in tqdm(path, desc="linear probe", unit="wd", disable=not progress, leave=False):
        w, b = fit_logistic(xtr_s, ytr, num_classes, wd, max_iter, init)
        init = (w, b)
        acc = float(((xval.double() @ w + b).argmax(1) == val[1]).double().mean())
        results[wd] = acc
        if best is None or acc > best[0]:
            best = (acc, wd, w, b)
    assert best is not None
    val_acc, wd, w, b = best
    test_acc = float(((xte.double() @ w + b).argmax(1) == test[1]).double().mean())
    return {
        "weight_decay": wd,
        "val_accuracy": val_acc,
        "val_by_weight_decay": {k: results[k] for k in weight_decays},
        "test_accuracy": test_acc,
    }
