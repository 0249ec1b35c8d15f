import os

import pytest
import torch

# R3HF_BENCH_SIZE=quick|cpu|gpu picks the shape set (r3hf/bench/cases.py); default by device.
SIZE = os.environ.get("R3HF_BENCH_SIZE", "gpu" if torch.cuda.is_available() else "cpu")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def sync():
    return torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)
