"""Matrix cross-entropy for language models (Matrix-SSL App. B): a small causal transformer,
download-free tasks, and the CE vs CE + MCE comparison (``manifold-ssl lm``)."""

from .model import GPT
from .tasks import CharVocab, Problem, arithmetic_problems, text_splits
from .train import LMConfig, compare, train_lm

__all__ = [
    "GPT",
    "CharVocab",
    "LMConfig",
    "Problem",
    "arithmetic_problems",
    "compare",
    "text_splits",
    "train_lm",
]
