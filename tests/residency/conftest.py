from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: threading overhead dominates and two cores are shared by the suite.
    torch.set_num_threads(1)
    yield
