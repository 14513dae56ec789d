"""Training configuration: one dataclass, filled from a YAML recipe and command-line overrides.

A recipe file holds any subset of the fields below; flags given on the command line win.
The full, resolved configuration is stored in every checkpoint so a run can be repeated.
"""
from __future__ import annotations

import dataclasses
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import VitkitError


AUTO_STEPS = 600  # optimiser steps a run gets when epochs are left to vitkit
FEW_STEPS = 200   # fewer, and a run from scratch learns little: it says so before it starts


def auto_batch_size(num_train: int) -> int:
    """About 50 optimiser steps an epoch: a power of two from 32 to 256."""
    return int(min(256, max(32, 2 ** math.floor(math.log2(max(num_train, 1) / 50)))))


@dataclass
class TrainConfig:
    model: str = "sl_vit_mini_patch4_gap_28"  # the best small-image ViT here (the demo's architecture)
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    output: str = "runs/train"
    epochs: int | None = None        # None: enough for AUTO_STEPS optimiser steps, at least 10 (auto_schedule)
    steps: int | None = None         # total optimiser steps instead of epochs: the last epoch stops part-way
    batch_size: int | None = None    # global, split across processes under torchrun; None: from the data's size
    lr: float = 1e-3                 # peak learning rate after warmup
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    label_smoothing: float = 0.1
    clip_grad: float | None = 1.0
    precision: str = "auto"          # auto | fp32 | bf16 | fp16 (GPUs; with a gradient scaler)
    device: str = "auto"             # auto | cpu | cuda | cuda:N | mps (auto: a GPU when there is one)
    deterministic: bool = False      # GPU: reproducible kernels, so a resume is exact (a CPU run always is)
    fsdp: bool = False               # torchrun: shard weights, gradients and optimiser state (FSDP2) over ranks
    seed: int = 0
    img_size: int | None = None      # None: the model's own
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    crop_padding: int = 2            # random crop after padding, 0 disables
    hflip: bool | None = None        # None: where the dataset is flip-invariant (digits are not; a folder says)
    resized_crop_scale: tuple[float, float] | None = None  # RandomResizedCrop area range, e.g. [0.08, 1]
    randaugment: str | None = None   # timm's spec, e.g. DeiT's "rand-m9-mstd0.5-inc1"
    reprob: float = 0.0              # Random Erasing probability (DeiT: 0.25)
    mixup: float = 0.0               # Mixup alpha (DeiT: 0.8); 0 disables
    cutmix: float = 0.0              # CutMix alpha (DeiT: 1.0); 0 disables
    mixup_prob: float = 1.0          # share of batches mixed at all
    mixup_switch_prob: float = 0.5   # with both on: share of mixed batches that use CutMix
    repeated_aug: int = 1            # repeated augmentation: each drawn image appears this many times (DeiT: 3)
    ema_decay: float | None = None   # EMA of the weights; the EMA model is then the run's model
    distill_from: str | None = None  # teacher checkpoint (DeiT distillation)
    distill: str = "hard"            # hard | soft
    distill_alpha: float = 0.5       # weight of the teacher's loss
    distill_tau: float = 1.0         # soft distillation temperature
    distill_cache: bool = False      # the teacher's outputs on the unaugmented training images, computed once
    val_fraction: float = 0.1        # folder datasets without a val/ folder
    mean: list[float] | None = None  # input normalisation per channel (default: the pretrained weights', else
    std: list[float] | None = None   # the dataset's; timm files store none: DeiT's are ImageNet's, AugReg's 0.5)
    workers: int | None = None
    channels_last: bool = False      # NHWC memory layout: ~1.3x faster convolutions (CNNs, hybrid stems) on CPU
    compile: bool = False            # torch.compile the training step (fewer, fused kernels; compiles once)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    patch_drop_schedule: dict[int, float] | None = None  # {first epoch (from 1): patch_drop_rate}, e.g. {1: 0.75, 41: 0.0}
    init_from: str | None = None     # fine-tune: pretrained weights (any layout vitkit.weights reads)
    backbone_from: str | None = None  # hybrid: start its CNN backbone from a trained CNN checkpoint
    linear_probe: bool = False       # fine-tune: train the head only
    layer_decay: float | None = None  # fine-tune: layer-wise learning-rate decay, e.g. 0.75
    log_every: int = 50
    objective: str = "classify"      # classify | mae (masked-autoencoder pretraining: labels ignored)
    mask_ratio: float = 0.75         # mae: share of each image's patches removed
    labels_per_class: float | None = None  # train on K labelled images per class (or a fraction < 1), seeded
    val_from_train: float | None = None  # validate on this share of train (count per class if >= 1), not on test

    def auto_schedule(self, num_train: int) -> TrainConfig:
        """The batch size and epochs left to vitkit, derived from the number of training images.

        Learning is counted in optimiser steps, not epochs: 1,400 images in batches of 256 give
        6 steps an epoch, too few to learn anything in 10 epochs. So the batch shrinks with the data
        (about 50 steps an epoch, 32 to 256 images), and a short epoch is repeated until the run
        has AUTO_STEPS steps (at least 10 epochs, at most 200)."""
        batch = self.batch_size or auto_batch_size(num_train)
        per_epoch = max(1, num_train // batch)
        if self.steps:  # epochs follow from steps: a budget of work, whatever the dataset's size
            return dataclasses.replace(self, batch_size=batch, epochs=math.ceil(self.steps / per_epoch))
        epochs = self.epochs or min(200, max(10, math.ceil(AUTO_STEPS / per_epoch)))
        return dataclasses.replace(self, batch_size=batch, epochs=epochs)

    def total_steps(self, num_train: int) -> int:
        return self.steps or (num_train // self.batch_size) * self.epochs

    @classmethod
    def from_sources(cls, config_file: str | Path | None = None, **overrides: Any) -> "TrainConfig":
        """Defaults, then the YAML recipe, then ``overrides`` (only what was given: a None is an explicit
        null, e.g. ``--set ema_decay=null`` switching off a recipe's EMA)."""
        recipe = load_yaml(config_file) if config_file is not None else {}
        kwargs = [recipe.get("model_kwargs"), overrides.get("model_kwargs")]
        if all(isinstance(k, dict) for k in kwargs):  # one entry changed, the recipe's architecture kept
            overrides = {**overrides, "model_kwargs": {**kwargs[0], **kwargs[1]}}
        try:
            return cls.from_dict({**recipe, **overrides})
        except VitkitError as error:
            if recipe and _fails_alike(cls, recipe, error):  # the recipe's own value: say which file holds it
                raise VitkitError(f"{config_file}: {error}") from error
            raise

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise VitkitError(f"unknown training option(s): {', '.join(unknown)} (valid: {', '.join(sorted(names))})")
        for key in ("betas", "resized_crop_scale"):
            pair = values.get(key)
            if pair is not None:
                if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(_is_number(v) for v in pair):
                    raise VitkitError(f"{key} must be a pair of numbers, e.g. [0.08, 1.0], got {pair!r}")
                values = {**values, key: tuple(float(v) for v in pair)}
        if values.get("patch_drop_schedule") is not None:
            values = {**values, "patch_drop_schedule": _epoch_schedule(values["patch_drop_schedule"])}
        values = {**values, **_normalisation(values.get("mean"), values.get("std"))}
        for f in dataclasses.fields(cls):  # numbers must be numbers: YAML and --set hand over strings too
            kind = str(f.type).removesuffix(" | None")
            value = values.get(f.name)
            if value is None and f.name in values and not str(f.type).endswith("| None"):
                raise VitkitError(f"{f.name} cannot be null (only options that can be off, e.g. ema_decay, can)")
            if kind in ("int", "float") and value is not None and not _is_number(value, integer=kind == "int"):
                raise VitkitError(f"{f.name} must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
            if value is not None and not isinstance(value, _KINDS.get(kind, object)):  # "false" is not False
                raise VitkitError(f"{f.name} must be {_KIND_NAMES[kind]}, got {value!r}")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise VitkitError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):  # whether it is there: resolve_device
            raise VitkitError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        for name in ("epochs", "steps", "batch_size", "lr"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise VitkitError(f"{name} must be positive, got {getattr(self, name)}")
        if self.img_size is not None and self.img_size < 1:
            raise VitkitError(f"img_size must be positive, got {self.img_size}")
        for name in ("warmup_epochs", "weight_decay", "min_lr"):
            if getattr(self, name) < 0:
                raise VitkitError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.min_lr > self.lr:  # the cosine would climb from lr to min_lr
            raise VitkitError(f"min_lr {self.min_lr:g} is above lr {self.lr:g}: the schedule decays from lr to "
                              f"min_lr; lower min_lr (e.g. --set min_lr={self.lr / 100:g})")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise VitkitError(f"layer_decay must be in (0, 1] (1: no decay), got {self.layer_decay}")
        if self.crop_padding < 0 or self.log_every < 1:
            raise VitkitError(f"crop_padding must be >= 0 and log_every >= 1, got {self.crop_padding} and "
                              f"{self.log_every}")
        if self.epochs is not None and self.warmup_epochs > self.epochs:  # fine for a quick check of a recipe, a mistake otherwise
            warnings.warn(f"warmup_epochs {self.warmup_epochs} > epochs {self.epochs}: the learning rate never "
                          f"reaches its peak of {self.lr}", stacklevel=2)
        if self.workers is not None and self.workers < 0:
            raise VitkitError(f"workers must be >= 0, got {self.workers}")
        if self.clip_grad is not None and self.clip_grad < 0:
            raise VitkitError(f"clip_grad must be >= 0 (0 or null: no clipping), got {self.clip_grad}")
        for name in ("drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise VitkitError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.distill not in ("hard", "soft"):
            raise VitkitError(f"distill must be hard or soft, got {self.distill!r}")
        if self.distill_cache and not self.distill_from:
            raise VitkitError("distill_cache caches a teacher's outputs: give distill_from too")
        if self.distill_cache and (self.mixup or self.cutmix):
            raise VitkitError("distill_cache: the teacher's outputs on unmixed images do not describe Mixup/CutMix "
                              "batches; turn distill_cache off (the teacher then sees each mixed batch)")
        if self.repeated_aug < 1:
            raise VitkitError(f"repeated_aug must be at least 1, got {self.repeated_aug}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise VitkitError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        for name in ("reprob", "mixup_prob", "mixup_switch_prob", "distill_alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise VitkitError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.mixup < 0 or self.cutmix < 0 or not 0.0 <= self.label_smoothing < 1.0 or self.distill_tau <= 0:
            raise VitkitError("mixup and cutmix must be >= 0, label_smoothing in [0, 1) and distill_tau > 0")
        low, high = self.resized_crop_scale or (1.0, 1.0)
        if not 0.0 < low <= high <= 1.0:
            raise VitkitError(f"resized_crop_scale must be [low, high] with 0 < low <= high <= 1, "
                              f"got {list(self.resized_crop_scale)}")
        self._validate_objective()
        if self.randaugment:
            from ..data.augment import RandAugment  # kornia is imported only when augmenting
            try:
                RandAugment.from_spec(self.randaugment)
            except ValueError as e:
                raise VitkitError(f"randaugment: {e}") from e

    def _validate_objective(self) -> None:
        if self.objective not in ("classify", "mae"):
            raise VitkitError(f"objective must be classify or mae, got {self.objective!r}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise VitkitError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        for key in ("labels_per_class", "val_from_train"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise VitkitError(f"{key} must be positive, got {getattr(self, key)}")
        if self.objective == "mae":
            used = [k for k in ("distill_from", "init_from", "backbone_from", "labels_per_class")
                    if getattr(self, k) is not None] + [k for k in ("mixup", "cutmix", "linear_probe") if getattr(self, k)]
            if used:
                raise VitkitError(f"objective mae pretrains on unlabeled images from scratch: {', '.join(used)} "
                                  "do not apply (fine-tune the run with `vitkit finetune --checkpoint RUN`)")

    def with_absolute_paths(self) -> "TrainConfig":
        """The same run with its existing input paths made absolute: the config stored in a run must
        still find its data, teacher and weights when eval, resume or finetune start from elsewhere."""
        def absolute(path: str | None) -> str | None:
            if not path or not Path(path).expanduser().exists():  # "" would become the working directory
                return path  # a missing path is reported later, as typed
            return str(Path(path).expanduser().resolve())

        dataset = self.dataset
        for prefix in ("folder:", "shards:"):
            if dataset.startswith(prefix):
                dataset = prefix + absolute(dataset[len(prefix):])
        return dataclasses.replace(self, dataset=dataset, data_dir=absolute(self.data_dir),
                                   init_from=absolute(self.init_from), backbone_from=absolute(self.backbone_from),
                                   distill_from=absolute(self.distill_from))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        if self.resized_crop_scale is not None:
            d["resized_crop_scale"] = list(self.resized_crop_scale)
        return d


def _normalisation(mean: Any, std: Any) -> dict[str, list[float] | None]:
    """mean and std, given together as equally long lists of numbers (std > 0), or neither."""
    if mean is None and std is None:
        return {}
    example = "e.g. mean: [0.5, 0.5, 0.5] and std: [0.5, 0.5, 0.5]"
    lists = [v if isinstance(v, (list, tuple)) else [v] for v in (mean, std)]
    if mean is None or std is None or len(lists[0]) != len(lists[1]) or not all(
            _is_number(v) for v in lists[0] + lists[1]) or min(lists[1]) <= 0:
        raise VitkitError(f"mean and std must be given together, one number per channel and std > 0 ({example}); "
                          f"got mean {mean!r}, std {std!r}")
    return {"mean": [float(v) for v in lists[0]], "std": [float(v) for v in lists[1]]}


def _fails_alike(cls: type, values: dict[str, Any], error: VitkitError) -> bool:
    """Whether ``values`` alone (the recipe, without overrides) fail as the merged values did."""
    try:
        cls.from_dict(values)
    except VitkitError as own:
        return str(own) == str(error)
    return False


def _epoch_schedule(schedule: Any) -> dict[int, float]:
    """{epoch: rate} with epochs counted from 1; JSON (a checkpoint's config) brings the keys as strings."""
    example = "e.g. {1: 0.75, 41: 0.5, 59: 0.0}"
    if not isinstance(schedule, dict) or not schedule:
        raise VitkitError(f"patch_drop_schedule must map first epochs to rates, {example}, got {schedule!r}")
    out = {}
    for epoch, rate in schedule.items():
        if isinstance(epoch, str) and epoch.isdigit():
            epoch = int(epoch)
        if not _is_number(epoch, integer=True) or epoch < 1 or not _is_number(rate) or not 0.0 <= rate < 1.0:
            raise VitkitError(f"patch_drop_schedule: epochs must be integers >= 1 and rates in [0, 1), {example}; "
                              f"got {epoch!r}: {rate!r}")
        out[epoch] = float(rate)
    return dict(sorted(out.items()))


_KINDS = {"bool": bool, "str": str, "dict[str, Any]": dict}
_KIND_NAMES = {"bool": "true or false", "str": "a string", "dict[str, Any]": "a mapping, e.g. {depth: 7}"}


def _is_number(value: Any, integer: bool = False) -> bool:
    return not isinstance(value, bool) and isinstance(value, int if integer else (int, float))


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; a recipe means the number, as YAML 1.2 and JSON do."""


_RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                                    list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    """A recipe file's text or a ``--set`` value, with ``1e-3`` a number."""
    return yaml.load(text, Loader=_RecipeLoader)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VitkitError(f"{path}: recipe file not found") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise VitkitError(f"{path}: not a UTF-8 text file ({e.__class__.__name__})") from e
    except yaml.YAMLError as e:
        raise VitkitError(f"{path}: not valid YAML ({e.__class__.__name__}: {str(e).splitlines()[0]})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise VitkitError(f"{path}: a recipe must be a mapping of option: value")
    odd = [repr(k) for k in data if not isinstance(k, str)]
    if odd:  # e.g. `1: 0.5` at the top level, or `yes:` (YAML's True)
        raise VitkitError(f"{path}: option names must be words, got {', '.join(odd)}")
    return {k.replace("-", "_"): v for k, v in data.items()}
