"""The training loop: data -> model -> AdamW + cosine schedule -> checkpoints every epoch.

A run is a pure function of its configuration: the shuffling and the random draws of
each epoch are seeded from (seed, epoch, rank), and everything else a resumed run needs
(weights, optimizer moments, step, history) is in ``train_state.pt``. So a run killed
after epoch k and resumed ends exactly where the uninterrupted run ends.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm  # tqdm.write: log lines that do not break a bar on a terminal

from ..allocator import keep_freed_memory
from ..data.subset import labelled_subset, split_validation
from ..data import BatchAugment, Mixup, folder_root, has_separate_test, load_dataset, make_loader
from ..device import describe, pin_memory, resolve_device, setup_device, to_device
from ..errors import VitkitError
from ..machine import cpu_name
from ..models import count_params, create_model, get_model_spec, input_geometry, spec_of
from ..fileio import WriteError, write_json, write_text
from ..progress import progress
from ..weights.hub import is_hub_ref
from .checkpoint import (STATE_NAME, claim_output, load_checkpoint, load_train_state, save_checkpoint, save_train_state,
                         training_lock, unwrap)
from .config import FEW_STEPS, TrainConfig
from .losses import Teacher, TrainingLoss
from .distributed import DistInfo, barrier, full_state, init_distributed, shard_model, shutdown, wrap_distributed
from .ema import create_ema
from .evaluate import evaluate_dataset, predict_logits
from .finetune import body_to_eval, freeze_body, init_backbone, load_pretrained, replace_head
from .fp32_linear import onednn_pays_off, use_onednn_linears
from .optim import cosine_lr, create_optimizer, set_lr
from .plots import plot_confusion, plot_curves
from .precision import autocast, grad_scaler, resolve_precision


def model_input_shape(cfg: TrainConfig) -> tuple[int, int]:
    """(in_chans, img_size) a model built from scratch by ``cfg`` takes."""
    kwargs = {**get_model_spec(cfg.model).kwargs, **cfg.model_kwargs}
    given = cfg.model_kwargs.get("img_size")
    if cfg.img_size and given and given != cfg.img_size:  # the data would be cut to one, the model built for the other
        raise VitkitError(f"img_size {cfg.img_size} and model_kwargs img_size {given} disagree; give one of them")
    return kwargs.get("in_chans", 3), cfg.img_size or kwargs.get("img_size", 224)


def build_datasets(cfg: TrainConfig, in_chans: int, img_size: int) -> tuple[Any, Any, Any]:
    """Train, validation (scored every epoch, picks best/) and test (the final report) splits.

    Validation and test are the same held-out images except for a folder with both val/ and
    test/, whose test/ then stays unseen until the end."""
    common = dict(data_dir=cfg.data_dir, img_size=img_size, in_chans=in_chans,
                  val_fraction=cfg.val_fraction, seed=cfg.seed)
    splits = ("train", "val", "test") if has_separate_test(cfg.dataset) else ("train", "val")
    loaded, errors = {}, []
    for split in splits:  # every split is read before any error is raised: one run lists all bad files
        try:
            loaded[split] = load_dataset(cfg.dataset, split, **common)
        except VitkitError as e:
            errors.append(str(e))
    if errors:
        raise VitkitError("; ".join(dict.fromkeys(errors)))
    train_ds, val_ds = loaded["train"], loaded["val"]
    test_ds = loaded.get("test", val_ds)
    if len(train_ds.classes) < 2:
        raise VitkitError(f"{cfg.dataset}: only one class ({train_ds.classes[0]}); a classifier needs two or more")
    for held_out in (val_ds, test_ds):
        if list(train_ds.classes) != list(held_out.classes):
            raise VitkitError(f"{cfg.dataset}: train and held-out splits have different classes")
    return train_ds, val_ds, test_ds


def build_model(cfg: TrainConfig, num_classes: int, pretrained: nn.Module | None = None) -> nn.Module:
    """From scratch, or the ``pretrained`` body with a new zero-initialised head (fine-tuning)."""
    if pretrained is not None:
        model = replace_head(pretrained, num_classes)
        if cfg.linear_probe:
            freeze_body(model)
        return model
    given = cfg.model_kwargs.get("num_classes", num_classes)
    if given != num_classes:  # the loss would fail at the first label past the head, mid-epoch
        raise VitkitError(f"model_kwargs num_classes {given} does not match the dataset's {num_classes} classes "
                          "(leave it out: the dataset sets it)")
    _, img_size = model_input_shape(cfg)
    kwargs = dict(num_classes=num_classes, img_size=img_size, drop_rate=cfg.drop_rate,
                  drop_path_rate=cfg.drop_path_rate)
    return create_model(cfg.model, **{**kwargs, **cfg.model_kwargs})


def _seed_epoch(cfg: TrainConfig, epoch: int, rank: int) -> None:
    torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1_009 + rank)


def _log(info: DistInfo, msg: str) -> None:
    if info.is_main:
        tqdm.write(msg, file=sys.stderr)


# Fields that say what a run trains, and those its restored state holds: a resumed run that changed one
# would mix two runs in one (a new batch size moves the schedule's step past its end; a new seed or
# val_fraction re-splits a folder; the optimiser's state keeps its own weight decay and betas).
RESUME_FIXED = ("model", "model_kwargs", "dataset", "data_dir", "img_size", "val_fraction", "seed", "batch_size",
                "optimizer", "weight_decay", "betas", "layer_decay")


class Trainer:
    """Holds a run's pieces; ``fit()`` runs the remaining epochs."""

    def __init__(self, cfg: TrainConfig, resume: bool = False):
        keep_freed_memory()  # 1.05-1.13x an epoch: activations are not page-faulted in afresh each step
        self.device = resolve_device(cfg.device)
        self.info = init_distributed(self.device)
        setup_device(self.device, cfg.deterministic)
        self.cfg = cfg = cfg.with_absolute_paths()
        self.out = Path(cfg.output)
        self.precision = resolve_precision(cfg.precision, self.device)
        state = load_train_state(self.out) if resume else None
        if state is not None:
            self._check_resumable(state)
        torch.manual_seed(cfg.seed)
        pretrained = self._pretrained(resume) if cfg.init_from else None
        if pretrained is not None:  # the run trains the weights' model, not the default
            self.cfg = cfg = dataclasses.replace(cfg, model=spec_of(pretrained).name)
        self.in_chans, self.img_size = input_geometry(pretrained) if pretrained else model_input_shape(cfg)
        self.train_ds, self.eval_ds, self.test_ds = self._datasets(cfg)
        self.cfg = cfg = self._settled(cfg)
        self.batch_per_rank = cfg.batch_size // self.info.world_size
        self.classes = list(self.train_ds.classes)
        self.mean, self.std = self._normalisation(pretrained)
        self.model = self._new_model(cfg, pretrained)
        if pretrained is not None and hasattr(self.model, "set_patch_drop_rate"):  # this run's, not pretraining's
            rate = cfg.model_kwargs.get("patch_drop_rate", 0.0)
            self.model.set_patch_drop_rate(rate)
        if cfg.backbone_from and not resume:  # a resumed run's state holds the backbone already
            init_backbone(self.model, cfg.backbone_from)
        self.model = self.model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.precision == "fp32" and self.device.type == "cpu" and onednn_pays_off():
            use_onednn_linears(self.model)  # 1.08-1.15x a step off Intel CPUs, same arithmetic
        if cfg.patch_drop_schedule and not hasattr(self.model, "set_patch_drop_rate"):
            raise VitkitError(f"{self.model_name}: patch_drop_schedule needs a ViT (patch tokens to drop)")
        self.plain: nn.Module | None = None  # FSDP: rank 0's whole copy, which it evaluates and saves
        self.gathered: tuple[dict[str, Any], dict[str, Any]] | None = None  # FSDP: the full state at epoch end
        if cfg.fsdp:
            self._check_fsdp()
            self.plain = copy.deepcopy(self.model) if self.info.is_main else None
            self.model = shard_model(self.model, self.device)
        self.augment, self.mixup = self._augmentation()
        self.teacher = self._teacher() if cfg.distill_from else None
        self.teacher_cache: torch.Tensor | None = None  # filled by fit() with distill_cache
        self.criterion = self._criterion()
        self.scaler = grad_scaler(self.precision, self.device)  # fp16 only
        self.ema = create_ema(self.model, cfg.ema_decay) if cfg.ema_decay else None
        try:
            self.optimizer = create_optimizer(self.model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.betas,
                                              cfg.layer_decay)
        except ValueError as e:
            raise VitkitError(f"{self.model_name}: {e}") from e
        self.scheduled_lr = cfg.lr
        self.progress: dict[str, Any] = {"epoch": 0, "step": 0, "history": [], "train_seconds": 0.0,
                                         "best_top1": -math.inf}  # the best score: top-1 (-loss for MAE)
        if state is not None:
            self._restore(state)
        # what the step calls: the model, wrapped for DDP and/or compiled; self.model stays the bare one
        self.step_model = wrap_distributed(self.model, self.info, self.device)
        if cfg.compile:
            self.step_model = torch.compile(self.step_model)
        self.steps_per_epoch = len(self._loader(0))
        if self.steps_per_epoch == 0:
            raise VitkitError(f"{cfg.dataset}: {len(self.train_ds)} training images are fewer than one batch "
                              f"of {cfg.batch_size}; lower --batch-size")

    def _check_fsdp(self) -> None:
        if not self.info.enabled:
            raise VitkitError("fsdp shards the model over torchrun's processes: start the run with torchrun "
                              "--nproc_per_node N -m vitkit train ..., or drop fsdp")
        if self.cfg.ema_decay:
            raise VitkitError("fsdp with ema_decay is not supported yet (the EMA would be a second sharded "
                              "model); drop one of them")

    def _datasets(self, cfg: TrainConfig) -> tuple[Any, Any, Any]:
        """Train, validation and test splits; ``val_from_train`` holds validation out of the training
        images, then ``labels_per_class`` keeps a seeded, class-balanced few of the rest."""
        train_ds, val_ds, test_ds = build_datasets(cfg, self.in_chans, self.img_size)
        if cfg.val_from_train is not None:
            train_ds, val_ds = split_validation(train_ds, cfg.val_from_train)
        if cfg.labels_per_class is not None:
            train_ds = labelled_subset(train_ds, cfg.labels_per_class, cfg.seed)
        return train_ds, val_ds, test_ds

    def _new_model(self, cfg: TrainConfig, pretrained: nn.Module | None) -> nn.Module:
        return build_model(cfg, len(self.classes), pretrained)

    def _loss(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor, order: torch.Tensor | None,
              batch: int) -> torch.Tensor:
        """The training loss of one batch (a pretraining objective replaces it)."""
        return self.criterion(model(x), targets, self._teacher_logits(x, order, batch))

    def _settled(self, cfg: TrainConfig) -> TrainConfig:
        """What the recipe left to vitkit, decided from the data: batch size and epochs (counted in
        optimiser steps, see TrainConfig.auto_schedule), and flips where the dataset allows them.
        The run records the decided values, so a resume or a repeat trains the same way."""
        cfg = cfg.auto_schedule(len(self.train_ds))
        if cfg.hflip is None:
            cfg = dataclasses.replace(cfg, hflip=self.train_ds.flip_invariant)
        if cfg.batch_size % self.info.world_size:
            raise VitkitError(f"batch_size {cfg.batch_size} does not divide over {self.info.world_size} processes")
        steps = cfg.total_steps(len(self.train_ds))
        warmup = int(cfg.warmup_epochs * (len(self.train_ds) // cfg.batch_size))
        if warmup >= steps:
            _log(self.info, f"warning: the warmup ({cfg.warmup_epochs:g} epochs, {warmup} steps) outlasts the run's "
                            f"{steps} steps, so the learning rate never reaches {cfg.lr:g}: lower --warmup-epochs")
        if steps < FEW_STEPS and not cfg.init_from:
            _log(self.info, f"warning: {len(self.train_ds)} images in batches of {cfg.batch_size} for {cfg.epochs} "
                            f"epochs is only {steps} optimiser steps, too few for a model trained from scratch "
                            f"to learn much: lower --batch-size or raise --epochs (or leave both to vitkit)")
        return cfg

    def _normalisation(self, pretrained: nn.Module | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The recipe's mean/std, else what pretrained weights were trained with, else the dataset's."""
        cfg = self.cfg
        if cfg.mean is not None:
            if len(cfg.mean) != self.in_chans:
                raise VitkitError(f"mean and std have {len(cfg.mean)} values; the model reads {self.in_chans} "
                                  "channel(s)")
            return tuple(cfg.mean), tuple(cfg.std)
        source = getattr(pretrained, "checkpoint_meta", {})
        if len(source.get("mean", [])) == self.in_chans:
            return tuple(source["mean"]), tuple(source["std"])
        return tuple(self.train_ds.mean), tuple(self.train_ds.std)

    def _pretrained(self, resume: bool) -> nn.Module:
        """The weights to fine-tune. A resumed run rebuilds the same model from its own last checkpoint
        (its state then restores every tensor), so the pretrained file need not be kept."""
        cfg = self.cfg
        source = self.out if resume else cfg.init_from
        return load_pretrained(source, cfg.img_size, linear_probe=cfg.linear_probe, drop_rate=cfg.drop_rate,
                               drop_path_rate=cfg.drop_path_rate, **cfg.model_kwargs)

    def _augmentation(self) -> tuple[BatchAugment, Mixup | None]:
        cfg = self.cfg
        augment = BatchAugment(self.mean, self.std, crop_padding=cfg.crop_padding, hflip=cfg.hflip,
                               resized_crop_scale=cfg.resized_crop_scale, randaugment=cfg.randaugment,
                               reprob=cfg.reprob)
        if cfg.mixup == 0 and cfg.cutmix == 0:
            return augment, None
        return augment, Mixup(cfg.mixup, cfg.cutmix, prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob,
                              label_smoothing=cfg.label_smoothing, num_classes=len(self.classes))

    def _criterion(self) -> TrainingLoss:
        """Cross-entropy, plus the teacher's term when distilling: on the distillation head of a
        ``deit_*_distilled_*`` model, else blended on the single head (classic knowledge distillation)."""
        cfg = self.cfg
        if self.teacher is not None and hasattr(self.model, "set_distilled_training"):
            try:
                self.model.set_distilled_training(True)
            except ValueError as e:
                raise VitkitError(f"--distill-from: {e}") from e
        elif self.teacher is not None:
            _log(self.info, f"{self.model_name} has no distillation token: the teacher's loss is blended on its "
                            "one head")
        return TrainingLoss(cfg.label_smoothing, cfg.distill, cfg.distill_alpha, cfg.distill_tau)

    def _teacher(self) -> Teacher:
        """The frozen teacher of DeiT distillation; it must predict this dataset's classes."""
        folder = Path(self.cfg.distill_from)
        if (folder / STATE_NAME).exists() and not (folder / "eval.json").exists():
            raise VitkitError(f"{folder}: this run has not finished (no eval.json): resume it first, or pass "
                              f"{folder / 'best'} to distil from its best epoch so far")
        model, meta = load_checkpoint(self.cfg.distill_from)
        if list(meta["classes"]) != self.classes:
            raise VitkitError(f"{self.cfg.distill_from}: the teacher predicts {len(meta['classes'])} classes "
                              f"({', '.join(map(str, meta['classes'][:4]))}, ...), not this dataset's")
        if meta["in_chans"] != self.in_chans:
            raise VitkitError(f"{self.cfg.distill_from}: the teacher takes {meta['in_chans']} channels, "
                              f"the student {self.in_chans}")
        model = model.to(memory_format=torch.channels_last)
        return Teacher(model, (self.mean, self.std), (meta["mean"], meta["std"]), meta["img_size"]).to(self.device)

    def _cache_teacher(self) -> torch.Tensor:
        """The teacher's logits for every training image, in dataset order: of the image and its
        mirror image averaged when the student is trained on flips."""
        loader = make_loader(self.train_ds, max(self.cfg.batch_size, 256), shuffle=False, num_workers=self.cfg.workers)
        with progress(total=len(self.train_ds), desc="teacher outputs", disable=not self.info.is_main,
                      leave=False) as bar:
            logits, _ = predict_logits(self.teacher, loader, self.mean, self.std, self.precision, bar,
                                       flip_tta=self.cfg.hflip, device=self.device)
        return logits

    def _teacher_logits(self, x: torch.Tensor, order: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """The teacher's logits for batch number ``batch`` of an epoch whose sample order is ``order``."""
        if self.teacher is None:
            return None
        if self.teacher_cache is not None:
            part = self.teacher_cache[order[batch * self.batch_per_rank:(batch + 1) * self.batch_per_rank]]
            return to_device(part, self.device)
        return self.teacher(x)

    @property
    def run_model(self) -> nn.Module:
        """The model the run produces: the EMA of the weights when enabled, else the trained weights."""
        if self.ema is not None:
            return self.ema.module
        return self.plain if self.cfg.fsdp else unwrap(self.model)

    @property
    def model_name(self) -> str:
        """The registry name of what is trained: the loaded weights' own when fine-tuning."""
        return spec_of(unwrap(self.model)).name

    def _restore(self, state: dict[str, Any]) -> None:
        if self.cfg.fsdp:  # loading full dicts into sharded weights hung under gloo in torch 2.13: not yet offered
            raise VitkitError(f"{self.out}: resuming an FSDP run is not supported yet; its model.safetensors loads "
                              f"in one process (eval, predict, finetune --checkpoint {self.out})")
        if (self.ema is not None) != ("ema" in state):
            raise VitkitError(f"{self.out / STATE_NAME}: the run was trained {'with' if 'ema' in state else 'without'}"
                              f" an EMA of the weights; resume it with the same ema_decay setting")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            if self.scaler is not None and "scaler" in state:  # a run resumed in fp16 from bf16 starts afresh
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
            raise VitkitError(f"{self.out / STATE_NAME}: does not match this model/recipe ({first})") from e
        self.progress = state["progress"]
        _log(self.info, f"resuming {self.out} after epoch {self.progress['epoch']}")

    def _check_resumable(self, state: dict[str, Any]) -> None:
        """A resumed run may change how it goes on (epochs, learning rate, ...), not what it trains."""
        given = {k: v for k, v in state.get("config", {}).items() if k in RESUME_FIXED}
        stored = dataclasses.replace(self.cfg, **given).with_absolute_paths()  # a run older than absolute paths
        as_tuple = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731 - a state file keeps lists
        changed = [k for k in given if as_tuple(getattr(stored, k)) != as_tuple(getattr(self.cfg, k))]
        same_size = not self.cfg.init_from and model_input_shape(stored) == model_input_shape(self.cfg)
        if "img_size" in changed and same_size:  # left out, and the model's own size named: the same run
            changed.remove("img_size")
        if changed:
            said = ", ".join(f"{k} {getattr(stored, k)!r} -> {getattr(self.cfg, k)!r}" for k in changed)
            raise VitkitError(f"{self.out}: a resumed run keeps its model, data, batches and optimiser ({said}); "
                              f"start a new run with --output, or fine-tune this one with `vitkit finetune`")
        done = state["progress"]["epoch"]
        if self.cfg.epochs < done:
            raise VitkitError(f"{self.out}: this run has already trained {done} epochs, more than --epochs "
                              f"{self.cfg.epochs}; give --epochs {done} or more")

    def _loader(self, epoch: int):
        return make_loader(self.train_ds, self.batch_per_rank, shuffle=True, seed=self.cfg.seed, epoch=epoch,
                           drop_last=True, rank=self.info.rank, world_size=self.info.world_size,
                           num_workers=self.cfg.workers, repeats=self.cfg.repeated_aug,
                           pin_memory=pin_memory(self.device))

    def _inputs(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented, normalised (and mixed) inputs with their targets: int labels, or soft ones when mixed.
        The uint8 batch goes to the device first: a quarter of the bytes of the float input, and the
        augmentations then run there."""
        images, labels = to_device(images, self.device), to_device(labels, self.device)
        x = self.augment(images)
        if self.mixup is not None:
            x, labels = self.mixup(x, labels)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, labels

    def meta(self, **extra: Any) -> dict[str, Any]:
        """What a checkpoint's config.json records besides the architecture."""
        return {"classes": self.classes, "mean": list(self.mean), "std": list(self.std), "img_size": self.img_size,
                "in_chans": self.in_chans, "dataset": self.cfg.dataset, "precision": self.precision,
                "recipe": self.cfg.to_dict(), **extra}

    def train_one_epoch(self, epoch: int) -> float:
        cfg, model = self.cfg, self.step_model
        model.train()
        if cfg.linear_probe:
            body_to_eval(self.model)
        self._schedule_patch_drop(epoch)
        _seed_epoch(cfg, epoch, self.info.rank)
        loader = self._loader(epoch)
        total_steps = cfg.steps or cfg.epochs * self.steps_per_epoch
        warmup = int(cfg.warmup_epochs * self.steps_per_epoch)
        bar = progress(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not self.info.is_main, leave=False)
        # both loaders yield their sampler's order, batch by batch: a cached teacher looks its outputs up by it
        order = loader.sampler.indices() if self.teacher_cache is not None else None
        loss_sum, n = torch.zeros((), device=self.device), 0
        for batch, (images, labels) in enumerate(bar):
            if self.progress["step"] >= total_steps:
                break  # --steps ends the last epoch part-way
            lr = self.scheduled_lr = cosine_lr(self.progress["step"], total_steps, warmup, cfg.lr, cfg.min_lr)
            set_lr(self.optimizer, lr)
            x, targets = self._inputs(images, labels)
            with autocast(self.precision, self.device.type):
                loss = self._loss(model, x, targets, order, batch)
            self.optimizer.zero_grad(set_to_none=True)
            self._step(loss)
            if self.ema is not None:
                self.ema.update_parameters(unwrap(self.model))
            self.progress["step"] += 1
            loss_sum += loss.detach().float() * len(labels)
            n += len(labels)
            if self.progress["step"] % cfg.log_every == 0:
                value = loss.item()
                if not math.isfinite(value):
                    raise VitkitError(f"training diverged: loss is {value} at step {self.progress['step']}; "
                                      "lower --lr or raise --warmup-epochs")
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2e}", refresh=False)
        stats = torch.stack([loss_sum, torch.tensor(float(n), device=self.device)])
        if self.info.enabled:
            dist.all_reduce(stats)
        mean = (stats[0] / stats[1]).item()
        if not math.isfinite(mean):  # short epochs may never reach a log_every check; nothing is saved
            raise VitkitError(f"training diverged: the mean loss of epoch {epoch + 1} is {mean}; lower --lr or "
                              "raise --warmup-epochs (or check mean and std)")
        return mean

    def _step(self, loss: torch.Tensor) -> None:
        """Backward pass, clipping and the optimiser's step; in fp16 through the loss scaler, which
        unscales the gradients before they are clipped and skips steps whose gradients overflowed."""
        clip = self.cfg.clip_grad
        if self.scaler is None:
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(self.step_model.parameters(), clip)
            self.optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.step_model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _schedule_patch_drop(self, epoch: int) -> None:
        """The rate of the last ``patch_drop_schedule`` stage begun by this (0-based) epoch."""
        started = [rate for first, rate in (self.cfg.patch_drop_schedule or {}).items() if first <= epoch + 1]
        if started:
            self.model.set_patch_drop_rate(started[-1])

    def evaluate(self, model: nn.Module | None = None, dataset: Any = None) -> dict[str, Any]:
        """``model`` (default: the run's model) on ``dataset`` (default: the validation split)."""
        model = self.run_model if model is None else model
        dataset = self.eval_ds if dataset is None else dataset
        return evaluate_dataset(model, dataset, self.mean, self.std, batch_size=max(self.cfg.batch_size, 256),
                                precision=self.precision, workers=self.cfg.workers, device=self.device)

    def _score(self, metrics: dict[str, Any]) -> float:
        """What picks best/: higher is better."""
        return metrics["top1"]

    def _save_epoch(self, epoch: int, train_loss: float, metrics: dict[str, Any], seconds: float) -> None:
        row = {"epoch": epoch + 1, "step": self.progress["step"], "train_loss": train_loss,
               "eval_loss": metrics["loss"], **({"eval_top1": metrics["top1"], "eval_top5": metrics["top5"]}
                                                if "top1" in metrics else {}),
               "lr": self.scheduled_lr, "epoch_seconds": seconds,  # the schedule's (groups may scale it)
               "train_seconds": self.progress["train_seconds"]}
        if self.ema is not None and "top1" in metrics:  # the EMA is the run's model; the raw weights' accuracy
            row["raw_top1"] = self.evaluate(unwrap(self.model))["top1"]  # shows what it adds
        self.progress["history"].append(row)
        self.progress["epoch"] = epoch + 1
        summary = {k: row[k] for k in ("epoch", "eval_top1", "eval_top5", "eval_loss") if k in row}
        save_checkpoint(self.out, self.run_model, self.meta(metrics=summary))
        if self._score(metrics) > self.progress["best_top1"]:
            self.progress["best_top1"] = self._score(metrics)
            save_checkpoint(self.out / "best", self.run_model, self.meta(metrics=summary))
        lines = "".join(json.dumps(h) + "\n" for h in self.progress["history"])
        write_text(self.out / "metrics.jsonl", lines)
        plot_curves(self.progress["history"], self.out / "curves.png")
        # Written last: once this lands, the epoch is complete on disk.
        weights, moments = self.gathered or (unwrap(self.model).state_dict(), self.optimizer.state_dict())
        save_train_state(self.out, {"model": weights, "optimizer": moments, "progress": self.progress,
                                    "config": self.cfg.to_dict(),
                                    **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
                                    **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {})})
        score = f"top-1 {100 * metrics['top1']:.2f}%" if "top1" in metrics else f"loss {metrics['loss']:.4f}"
        _log(self.info, f"epoch {epoch + 1}/{self.cfg.epochs}: train loss {train_loss:.4f}  eval {score}  "
                        f"({seconds:.0f}s)")

    @contextlib.contextmanager
    def _run_folder_errors(self, done: int) -> Iterator[None]:
        """A file of the run that cannot be written (full disk, read-only folder) stops the run with one
        line: which file, what is intact, how to go on. Checkpoints are written atomically and the
        training state last, so the epochs before ``done`` are whole on disk."""
        try:
            yield
        except WriteError as e:
            if done == 0:
                raise VitkitError(f"{e}; no epoch was finished before it: make room (or fix the folder's "
                                  "permissions) and start the run again") from e
            raise VitkitError(f"{e}; epochs 1-{done} are intact in {self.out}: make room (or fix the folder's "
                              f"permissions), then `vitkit train --resume {self.out}` goes on from there (or "
                              "copy the folder elsewhere and resume it there)") from e

    def fit(self) -> dict[str, Any]:
        wall = time.perf_counter()
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.progress["epoch"] < self.cfg.epochs:  # a finished run given more epochs is unfinished again
                (self.out / "eval.json").unlink(missing_ok=True)
            _log(self.info, f"training {self.model_name} ({count_params(self.model) / 1e6:.2f}M params) on "
                            f"{self.cfg.dataset}: {len(self.train_ds)} images, {len(self.classes)} classes, as "
                            f"{self.in_chans}x{self.img_size}x{self.img_size} inputs, "
                            f"{self.precision} on {describe(self.device)}, {self.info.world_size} process(es), "
                            f"{torch.get_num_threads()} threads")
        if self.cfg.distill_cache and self.progress["epoch"] < self.cfg.epochs:
            start = time.perf_counter()
            self.teacher_cache = self._cache_teacher()
            seconds = time.perf_counter() - start
            self.progress["train_seconds"] += seconds  # part of what training costs
            _log(self.info, f"teacher's outputs on {len(self.teacher_cache)} training images cached in {seconds:.0f}s")
        for epoch in range(self.progress["epoch"], self.cfg.epochs):
            start = time.perf_counter()
            try:
                train_loss = self.train_one_epoch(epoch)
            except KeyboardInterrupt:
                if self.progress["epoch"]:
                    _log(self.info, f"stopped in epoch {epoch + 1}; `vitkit train --resume {self.out}` goes on from "
                                    f"epoch {self.progress['epoch'] + 1}")
                raise
            seconds = time.perf_counter() - start
            self.progress["train_seconds"] += seconds
            if self.cfg.fsdp:
                self._gather()
            if self.info.is_main:
                with self._run_folder_errors(done=epoch):
                    self._save_epoch(epoch, train_loss, self.evaluate(), seconds)
            barrier(self.info)
        with self._run_folder_errors(done=self.cfg.epochs):
            result = self.final_report(time.perf_counter() - wall) if self.info.is_main else {}
        barrier(self.info)
        shutdown(self.info)
        return result

    def _gather(self) -> None:
        """FSDP: every rank gathers the full weights and optimiser state (a collective); rank 0 loads
        them into its whole copy, which it then evaluates and saves as one process would."""
        gathered = full_state(self.model, self.optimizer)
        if self.plain is not None:
            self.plain.load_state_dict(gathered[0])
            self.gathered = gathered

    def final_report(self, wall_seconds: float) -> dict[str, Any]:
        """eval.json + confusion.png for the last model on the test split."""
        metrics = self.evaluate(dataset=self.test_ds)
        report = {"model": self.model_name, "dataset": self.cfg.dataset, "split": "test",
                  "params": count_params(self.model), "epochs": self.cfg.epochs, "precision": self.precision,
                  "processes": self.info.world_size, "threads": torch.get_num_threads(), "cpu": cpu_name(),
                  "device": describe(self.device),
                  "train_seconds": self.progress["train_seconds"], "session_wall_seconds": wall_seconds,
                  **metrics}
        write_json(self.out / "eval.json", report)
        plot_confusion(metrics["confusion"], self.classes, self.out / "confusion.png")
        top5 = f"top-5 {100 * metrics['top5']:.2f}%  " if len(self.classes) > 5 else ""  # else always 100%
        _log(self.info, f"done: top-1 {100 * metrics['top1']:.2f}%  {top5}"
                        f"training {self.progress['train_seconds']:.0f}s -> {self.out}")
        return report


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train (or resume) a run described by ``cfg``; returns the final report on rank 0.

    A new run refuses an output folder that holds one already unless ``overwrite``."""
    cfg.validate()  # a TrainConfig built in Python has not been through from_dict's checks
    _check_inputs_exist(cfg, resume)
    _check_output_outside_data(cfg)
    inputs = [cfg.init_from, cfg.distill_from, cfg.backbone_from]
    with training_lock(cfg.output):
        if not resume:  # refused now, before the data is read; replaced only once the new run is known to start
            claim_output(cfg.output, overwrite, inputs=inputs, remove=False)
        trainer = _trainer_class(cfg)(cfg, resume=resume)
        if not resume and trainer.info.is_main:  # one process deletes, the one that holds the lock
            claim_output(cfg.output, overwrite, inputs=inputs)
        barrier(trainer.info)
        return trainer.fit()


def _trainer_class(cfg: TrainConfig) -> type[Trainer]:
    if cfg.objective == "mae":
        from .pretrain import MaeTrainer  # which builds on this module
        return MaeTrainer
    return Trainer


def _check_inputs_exist(cfg: TrainConfig, resume: bool = False) -> None:
    """A missing teacher or backbone run is named with the recipe that makes it, where there is one.
    A resumed run holds its starting weights and backbone already; only a teacher is read again."""
    for key in ("distill_from",) if resume else ("init_from", "distill_from", "backbone_from"):
        source = getattr(cfg, key)
        if source and not is_hub_ref(source) and not Path(source).exists():  # the Hub's are fetched when read
            recipe = Path("recipes") / f"{Path(source).name}.yaml"
            hint = (f"; `vitkit train --config {recipe} --output {source}` makes it" if recipe.is_file()
                    else "; train or fetch it first")
            raise VitkitError(f"{key}: {source}: no such file or folder{hint}")


def _check_output_outside_data(cfg: TrainConfig) -> None:
    """A run written into its own image folder would make its PNGs and folders part of the data."""
    root = folder_root(cfg.dataset)
    if root is None:  # not a folder, or none named (load_dataset says so)
        return
    out = Path(cfg.output).expanduser().resolve()
    if out == root or root in out.parents:
        raise VitkitError(f"--output {cfg.output} is inside the dataset folder {root}: the run's files would be "
                          "read as images and classes; write it elsewhere")
