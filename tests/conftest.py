import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

torch.set_flush_denormal(True)  # random weights can make CPU kernels crawl on subnormals


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
