"""torchrun on CPUs (gloo): DDP equals one process's training, FSDP trains and saves a checkpoint that one
process loads. The GPU side (NCCL, LOCAL_RANK devices) is exercised by benchmarks/gpu_check.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vitkit.errors import VitkitError
from vitkit.train import TrainConfig, evaluate_checkpoint, train
from vitkit.train.distributed import backend_for

MODEL = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
# nothing random but the weights' initialisation and the data order, which every rank draws alike
RECIPE = dict(model="vit_mini_patch4_28", dataset="digits", epochs=1, batch_size=32, lr=3e-3, warmup_epochs=0.5,
              precision="fp32", model_kwargs=MODEL, drop_path_rate=0.0, hflip=False, crop_padding=0,
              label_smoothing=0.0, device="cpu")


def torchrun(tmp_path: Path, out: Path, port: int, **extra) -> subprocess.CompletedProcess:
    recipe = tmp_path / f"{out.name}.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, **extra}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), "-m", "vitkit", "train", "--config", str(recipe), "--output", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    train(TrainConfig.from_dict({**RECIPE, "output": str(out)}))
    return out


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < atol, worst  # 2.5e-5 measured after 44 steps; an untrained model is ~1e-1 away


def test_the_backend_follows_the_device():
    assert backend_for("cpu") == "gloo" and backend_for(torch.device("cuda", 1)) == "nccl"
    assert backend_for("mps") == "gloo"


def test_fsdp_needs_several_processes(tmp_path):
    with pytest.raises(VitkitError, match="fsdp shards the model over torchrun's processes"):
        train(TrainConfig.from_dict({**RECIPE, "output": str(tmp_path / "r"), "fsdp": True}))


@pytest.mark.slow
def test_two_ddp_processes_train_as_one_process_does(single, tmp_path):
    """Each rank's half-batch gradients, averaged, are the whole batch's: the same steps up to rounding."""
    torchrun(tmp_path, tmp_path / "ddp", 29541)
    assert_same_weights(single, tmp_path / "ddp", atol=2e-4)
    one, two = (json.loads((d / "eval.json").read_text()) for d in (single, tmp_path / "ddp"))
    assert two["processes"] == 2 and abs(one["top1"] - two["top1"]) <= 2 / one["num_samples"]
    assert one["loss"] == pytest.approx(two["loss"], abs=1e-3)


@pytest.mark.slow
def test_fsdp_trains_and_saves_a_checkpoint_one_process_loads(single, tmp_path):
    """Sharded weights, gradients and moments with activation checkpointing: the same arithmetic as
    one process, gathered into a whole checkpoint that `eval` (one process) scores as training did."""
    run = tmp_path / "fsdp"
    proc = torchrun(tmp_path, run, 29542, fsdp=True)
    assert proc.stderr.count("done: top-1") == 1
    assert_same_weights(single, run, atol=2e-4)
    reported = json.loads((run / "eval.json").read_text())
    again = evaluate_checkpoint(run, split="test", precision="fp32")
    assert again["top1"] == reported["top1"] and again["loss"] == pytest.approx(reported["loss"], abs=1e-5)
    state = torch.load(run / "train_state.pt", weights_only=True)
    saved = load_file(run / "model.safetensors")
    assert all(torch.equal(state["model"][k], saved[k]) for k in saved)  # full tensors, not shards
    moments = state["optimizer"]["state"]
    assert all(moments[k]["exp_avg"].shape == saved[k].shape for k in saved if k in moments)  # whole, too
    assert len(moments) == len(state["model"])
