import pytest
from helpers import TINY_MODEL

from manifold_ssl.config import apply_overrides, load_recipe


@pytest.fixture
def tiny_cfg(tmp_path):
    """MMCR on digits, small enough for a few seconds of CPU."""

    def make(*overrides: str):
        return apply_overrides(
            load_recipe("digits_mmcr"),
            [
                f"--data.root={tmp_path / 'data'}",
                f"--train.out_dir={tmp_path / 'runs'}",
                *TINY_MODEL,
                "--train.epochs=2",
                "--train.log_every=1",
                "--train.knn_every=0",
                "--eval.linear_max_iter=20",
                *overrides,
            ],
        )

    return make
