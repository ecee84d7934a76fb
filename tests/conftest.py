"""Shared fixtures. The sample generators live in tests/samples.py."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def gen():
    """A seeded CPU generator, the same in every test and run."""
    return torch.Generator().manual_seed(0)
