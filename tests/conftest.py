import os
import sys

import pytest
import torch

# Let tests import the reference implementations as ``reference``.
sys.path.insert(0, os.path.dirname(__file__))

# Two cores: keep PyTorch from oversubscribing them when pytest-xdist or the DDP test spawns.
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
