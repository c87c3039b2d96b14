"""Weighted kNN classifier on cosine similarity (Wu et al. 2018; the SSL monitor)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["knn_accuracy", "knn_predict"]


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    """Labels of ``query_features`` (Q, F) by the k nearest ``train_features`` (N, F).

    Neighbours by cosine similarity s; each votes for its class with weight exp(s / T).
    k is capped at N.
    """
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError("train_features and train_labels must have the same length")
    if temperature <= 0 or k < 1:
        raise ValueError(
            f"k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}"
        )
    bank = F.normalize(train_features.float(), dim=1)
    train_labels = train_labels.to(bank.device)
    k = min(k, bank.shape[0])
    preds = []
    for start in range(0, query_features.shape[0], chunk):
        q = F.normalize(query_features[start : start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (q, k)
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        votes.scatter_add_(1, train_labels[idx], torch.exp(sim / temperature))
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    pred = knn_predict(train_features, train_labels, query_features, num_classes, k, temperature)
    return float((pred == query_labels.to(pred.device)).float().mean())
