"""Masked-autoencoder pretraining (``objective: mae``): the Trainer's loop, schedule, checkpoints and
resume, with the reconstruction loss in place of cross-entropy and no labels.

Each epoch is scored on the held-out images with the same masking noise every time (seeded), so the
curve and the choice of best/ compare like with like. At the end the run writes eval.json (the test
split's reconstruction loss) and reconstructions.png (the paper's figure). The run folder is a
checkpoint of the whole MAE; ``vitkit finetune --checkpoint RUN`` fine-tunes its encoder.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data import load_dataset, make_loader, normalize
from ..data.subset import split_validation
from ..errors import VitkitError
from ..fileio import write_json
from ..machine import cpu_name
from ..models import MaskedAutoencoderViT, count_params, create_model, get_model_spec, mae_for_encoder
from .config import TrainConfig
from .engine import Trainer, _log
from .precision import autocast

FIGURE_IMAGES = 8  # test images in reconstructions.png
EVAL_IMAGES = 2000  # held-out images scored each epoch: enough for a steady curve, a few seconds on a CPU


def build_mae(cfg: TrainConfig) -> MaskedAutoencoderViT:
    """The run's MAE: a registered ``mae_*`` name, or any plain ViT's name as the encoder (then the
    decoder is the paper's unless ``model_kwargs`` say otherwise). No drop path, as the paper pretrains."""
    builder = get_model_spec(cfg.model).builder
    kwargs = {**({"img_size": cfg.img_size} if cfg.img_size else {}), **cfg.model_kwargs}
    try:
        if isinstance(builder, type) and issubclass(builder, MaskedAutoencoderViT):
            return create_model(cfg.model, **kwargs)
        return mae_for_encoder(cfg.model, **kwargs)
    except ValueError as e:
        raise VitkitError(f"--model {cfg.model}: {e}") from e


class MaeTrainer(Trainer):
    """``Trainer`` for MAE pretraining; see the module's docstring."""

    def _datasets(self, cfg: TrainConfig) -> tuple[Any, Any, Any]:
        """Images only: a folder is read as images (class folders or not); labels, if any, are ignored."""
        common = dict(data_dir=cfg.data_dir, img_size=self.img_size, in_chans=self.in_chans,
                      val_fraction=cfg.val_fraction, seed=cfg.seed, unlabeled=cfg.dataset.startswith("folder:"))
        if not cfg.dataset.startswith("folder:"):
            del common["unlabeled"]
        train_ds, val_ds = (load_dataset(cfg.dataset, split, **common) for split in ("train", "val"))
        if cfg.val_from_train is not None:
            train_ds, val_ds = split_validation(train_ds, cfg.val_from_train)
        return train_ds, val_ds, val_ds

    def _new_model(self, cfg: TrainConfig, pretrained: nn.Module | None) -> nn.Module:
        return build_mae(cfg)

    def _loss(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor, order: torch.Tensor | None,
              batch: int) -> torch.Tensor:
        return model(x, mask_ratio=self.cfg.mask_ratio)[0]

    def _score(self, metrics: dict[str, Any]) -> float:
        return -metrics["loss"]

    def meta(self, **extra: Any) -> dict[str, Any]:
        """No class names: the MAE predicts pixels; fine-tuning names its own classes."""
        return {k: v for k, v in super().meta(**extra).items() if k != "classes"}

    def evaluate(self, model: nn.Module | None = None, dataset: Any = None) -> dict[str, Any]:
        """The reconstruction loss on (the first EVAL_IMAGES of) ``dataset`` with seeded noise."""
        model = self.run_model if model is None else model
        dataset = self.eval_ds if dataset is None else dataset
        return {"loss": reconstruction_loss(model, dataset, self.mean, self.std, self.cfg.mask_ratio,
                                            self.cfg.seed, self.precision, limit=EVAL_IMAGES)}

    def final_report(self, wall_seconds: float) -> dict[str, Any]:
        """eval.json (the held-out reconstruction loss, all of it) and reconstructions.png."""
        from ..explain.reconstruction import save_reconstructions
        loss = reconstruction_loss(self.run_model, self.test_ds, self.mean, self.std, self.cfg.mask_ratio,
                                   self.cfg.seed, self.precision)
        report = {"model": self.model_name, "objective": "mae", "dataset": self.cfg.dataset, "split": "held-out",
                  "images": len(self.train_ds), "params": count_params(self.model), "epochs": self.cfg.epochs,
                  "mask_ratio": self.cfg.mask_ratio, "reconstruction_loss": loss, "precision": self.precision,
                  "threads": torch.get_num_threads(), "cpu": cpu_name(),
                  "train_seconds": self.progress["train_seconds"], "session_wall_seconds": wall_seconds}
        write_json(self.out / "eval.json", report)
        images = torch.stack([self.test_ds[i][0] for i in range(min(FIGURE_IMAGES, len(self.test_ds)))])
        save_reconstructions(self.run_model, images, self.mean, self.std, self.out / "reconstructions.png",
                             mask_ratio=self.cfg.mask_ratio, seed=self.cfg.seed)
        _log(self.info, f"done: held-out reconstruction loss {loss:.4f}, training "
                        f"{self.progress['train_seconds']:.0f}s -> {self.out} (fine-tune it: vitkit finetune "
                        f"--checkpoint {self.out} ...)")
        return report


@torch.no_grad()
def reconstruction_loss(model: MaskedAutoencoderViT, dataset: Any, mean: tuple[float, ...], std: tuple[float, ...],
                        mask_ratio: float, seed: int, precision: str = "fp32", limit: int | None = None,
                        batch_size: int = 256) -> float:
    """Mean masked-patch MSE over ``dataset`` (its first ``limit`` images), the noise drawn from ``seed``."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same noise on any device
    device = next(model.parameters()).device
    total, n = 0.0, 0
    try:
        for images, _ in make_loader(dataset, batch_size, shuffle=False):
            if limit is not None and n >= limit:
                break
            x = normalize(images.to(device), mean, std)
            noise = torch.rand(len(x), model.patch_embed.num_patches, generator=generator).to(device)
            with autocast(precision, device.type):
                loss = model(x, mask_ratio=mask_ratio, noise=noise)[0]
            total += loss.float().item() * len(x)
            n += len(x)
    finally:
        model.train(was_training)
    return total / max(n, 1)
