import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The timm/HF reference files (../shared/fixtures beside the repo, or $VITKIT_FIXTURES)."""
    path = Path(os.environ.get("VITKIT_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
    assert path.is_dir(), f"reference fixtures not found at {path}"
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
