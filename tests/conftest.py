"""Engine tests: make tests/builders.py importable as ``builders``; shared fixtures."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def one_thread():
    """Tensors in tiny-model modules are tiny: with shared cores, torch's intra-op threads make
    each bootstrap replicate's indexing ~100x slower than one thread does. Restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
