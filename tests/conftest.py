import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The timm/HF reference files vendored in tests/fixtures (see its README), or $VITKIT_FIXTURES."""
    path = Path(os.environ.get("VITKIT_FIXTURES", Path(__file__).resolve().parent / "fixtures"))
    assert path.is_dir(), f"reference fixtures not found at {path}"
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def vit_pytorch_file(name: str) -> ModuleType:
    """One module of vit-pytorch (an independent implementation to test against), loaded alone:
    its package __init__ imports torchvision, which does not import with this CPU torch."""
    path = Path(importlib.util.find_spec("vit_pytorch").origin).parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_vit_pytorch_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_classifier_run(folder):
    """A saved 3-class tiny ViT run (16 px gray) for the serving tests, loaded as `vitkit serve` loads it:
    (classifier, config, plain model)."""
    import vitkit
    from vitkit.inference.predict import load_classifier
    from vitkit.train import save_checkpoint

    model = vitkit.create_model("vit_mini_patch4_28", img_size=16, embed_dim=32, depth=1, num_heads=2, num_classes=3)
    save_checkpoint(folder, model, dict(classes=["ant", "bee", "cat"], mean=[0.5], std=[0.25], img_size=16,
                                        in_chans=1))
    return load_classifier(folder, "fp32")
