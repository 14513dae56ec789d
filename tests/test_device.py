"""Device discipline and device choice.

Every tensor that a model, a loss, an augmentation, the EMA or explain creates must follow its input's
device, or a GPU run fails (or silently runs on the CPU). PyTorch's ``meta`` device checks that without a
GPU: a tensor made on the CPU inside them meets the meta input and raises "Tensor on device cpu is not on
the expected device meta". Shapes are still computed, so the checks are real forward and backward passes.
"""
import pytest
import torch
import torch.nn.functional as F

from vitkit.data import BatchAugment, Mixup, normalize, random_crop_flip
from vitkit.device import pin_memory, resolve_device, to_device
from vitkit.errors import VitkitError
from vitkit.explain.attention import attention_rollout, class_attention
from vitkit.inference import prepare_for_inference
from vitkit.models import create_model, get_model_spec, list_models
from vitkit.train import TrainConfig
from vitkit.train.ema import create_ema
from vitkit.train.losses import Teacher, TrainingLoss
from vitkit.train.precision import autocast, grad_scaler, resolve_precision

META = torch.device("meta")


def meta_model(name: str, **kw) -> tuple[torch.nn.Module, torch.Tensor]:
    """The registered model, built on meta (ViT-H/14 costs nothing there), and a meta batch it takes."""
    with META:
        model = create_model(name, **kw)
    kwargs = {**get_model_spec(name).kwargs, **kw}
    size = kwargs.get("img_size", 224)
    size = size if isinstance(size, int) else size[0]
    return model, torch.empty(2, kwargs.get("in_chans", 3), size, size, device=META)


def output(out):
    """The first per-image output: logits (a distilled model's first head), or an MAE's ``pred`` after its
    scalar loss; every tensor of a tuple must be on the device."""
    if not isinstance(out, tuple):
        return out
    assert all(t.device == META for t in out)
    return next(t for t in out if t.ndim > 0)


@pytest.mark.slow  # ~0.5 s a model (Python dispatch through deep models, on meta), 126 models
@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_and_predicts_on_the_input_device(name):
    model, x = meta_model(name)
    assert {p.device for p in model.parameters()} == {META}
    out = output(model.train()(x))
    assert out.device == META and out.shape[0] == 2
    out.float().sum().backward()
    assert all(p.grad is None or p.grad.device == META for p in model.parameters())
    with torch.no_grad():
        assert output(model.eval()(x)).device == META


def tiny_vit(**kw) -> tuple[torch.nn.Module, torch.Tensor]:
    return meta_model("vit_mini_patch4_28", num_classes=10, img_size=16, embed_dim=32, depth=2, num_heads=2,
                      **kw)


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_a_distillation_step_stays_on_the_device(mode):
    student, x = meta_model("deit_tiny_distilled_patch16_224", num_classes=10, img_size=32, depth=2)
    student.set_distilled_training(True)
    teacher_model, _ = tiny_vit(in_chans=3)
    teacher = Teacher(teacher_model, ((0.5,) * 3, (0.25,) * 3), ((0.4,) * 3, (0.2,) * 3), img_size=16).to(META)
    labels = torch.zeros(2, dtype=torch.long, device=META)
    loss = TrainingLoss(0.1, mode)(student(x), labels, teacher(x))
    assert loss.device == META and loss.shape == ()
    loss.backward()


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0)])
def test_a_mixup_or_cutmix_step_stays_on_the_device(mixup, cutmix):
    model, x = tiny_vit()
    labels = torch.zeros(2, dtype=torch.long, device=META)
    mixed, targets = Mixup(mixup, cutmix, num_classes=10)(x, labels)
    assert mixed.device == META and targets.device == META and targets.shape == (2, 10)
    with autocast("bf16", "cpu"):  # autocast's casts on meta tensors: the dtypes a GPU step sees
        loss = TrainingLoss(0.1)(model(mixed), targets)
    loss.backward()


def test_the_ema_updates_on_the_device():
    model, x = tiny_vit()
    ema = create_ema(model, 0.99)
    for _ in range(3):  # the first update copies, later ones average
        ema.update_parameters(model)
    assert {p.device for p in ema.module.parameters()} == {META} and int(ema.n_averaged) == 3
    assert output(ema(x)).device == META


def test_the_ema_is_unchanged_on_the_cpu():
    """The step count is now read from the EMA's own CPU buffer: the same bias-corrected average as before."""
    model = torch.nn.Linear(3, 2)
    ema = create_ema(model, 0.9)
    history = []
    for _ in range(4):
        with torch.no_grad():
            model.weight.add_(1.0)
        history.append(model.weight.detach().clone())
        ema.update_parameters(model)
    weights = torch.tensor([0.9 ** (3 - i) for i in range(4)])
    expected = sum(w * h for w, h in zip(weights, history)) / weights.sum()
    torch.testing.assert_close(ema.module.weight, expected)


def test_explain_rollout_and_class_attention_stay_on_the_device():
    model, x = tiny_vit()
    assert attention_rollout(model, x).shape == (2, 4, 4) and attention_rollout(model, x).device == META
    assert class_attention(model, x).device == META


@pytest.mark.parametrize("chans", [1, 3])
def test_the_augmentation_pipeline_stays_on_the_device(chans):
    images = torch.empty(4, chans, 32, 32, dtype=torch.uint8, device=META)
    augment = BatchAugment((0.5,) * chans, (0.25,) * chans, crop_padding=2, hflip=True,
                           resized_crop_scale=(0.08, 1.0), randaugment="rand-m9-n4-mstd0.5-inc1", reprob=1.0)
    assert augment(images).device == META and augment(images).dtype == torch.float32
    assert normalize(images, (0.5,) * chans, (0.25,) * chans).device == META
    assert random_crop_flip(images, 2, True, pad_mode="zeros").device == META


def test_the_augmentation_draws_do_not_depend_on_the_device():
    """The random draws come from the CPU generator wherever the pixels are, so the meta run consumes
    exactly the draws of the CPU run: the next draw after either is the same."""
    augment = BatchAugment((0.5,), (0.25,), crop_padding=2, hflip=True, resized_crop_scale=(0.5, 1.0),
                           randaugment="rand-m9-n2", reprob=0.5)
    after = []
    for device in ("cpu", META):
        torch.manual_seed(3)
        augment(torch.zeros(8, 1, 16, 16, dtype=torch.uint8, device=device))
        after.append(torch.rand(4))
    torch.testing.assert_close(after[0], after[1])


def test_devices_resolve_and_a_missing_gpu_is_one_clear_error():
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(" CPU ") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        for name in ("cuda", "cuda:1"):
            with pytest.raises(VitkitError, match=f"--device {name}: no CUDA GPU is visible"):
                resolve_device(name)
    with pytest.raises(VitkitError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(VitkitError, match="device must be auto, cpu, cuda, cuda:N or mps"):
        TrainConfig.from_dict({"device": "gpu"})
    assert not pin_memory(torch.device("cpu")) and pin_memory(torch.device("cuda", 0))
    x = torch.ones(2)
    assert to_device(x, torch.device("cpu")) is x  # a CPU run copies nothing


def test_precision_per_device():
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("fp32", "cuda") == "fp32"
    assert resolve_precision("auto", "mps") == "fp32"
    with pytest.raises(VitkitError, match="fp16 is for GPUs"):
        resolve_precision("fp16", "cpu")
    assert grad_scaler("bf16", "cpu") is None and grad_scaler("fp32", "cuda") is None
    assert grad_scaler("fp16", "cpu").is_enabled()  # the scaler itself: fp16 steps scale their loss
    with autocast("fp16", "cpu"):  # the fp16 branch of autocast (GPUs) is fp16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16
    with pytest.raises(VitkitError, match="int8 .* runs on CPUs only"):
        prepare_for_inference(torch.nn.Linear(2, 2), "int8", device=META)


def test_inference_on_another_device_returns_logits_where_the_images_were():
    with META:
        model = create_model("vit_mini_patch4_28", num_classes=10, img_size=16, embed_dim=32, depth=2, num_heads=2)
    prepared = prepare_for_inference(model, "bf16", device=META)
    assert {p.dtype for p in prepared.parameters()} == {torch.bfloat16}
    logits = prepared(torch.empty(2, 1, 16, 16, device=META))
    assert logits.device == META and logits.dtype == torch.float32 and logits.shape == (2, 10)


def test_fp16_steps_go_through_the_loss_scaler():
    """The trainer's fp16 branch: scaled backward, unscaled before clipping, an overflow step skipped."""
    from vitkit.train.engine import Trainer

    model = torch.nn.Linear(2, 1)
    trainer = Trainer.__new__(Trainer)  # only the step's pieces
    trainer.cfg = TrainConfig(clip_grad=1.0)
    trainer.step_model = model
    trainer.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    before = model.weight.detach().clone()
    trainer._step(model(torch.ones(1, 2)).sum() * float("inf"))  # overflow: skipped, scale halved
    assert torch.equal(model.weight, before) and trainer.scaler.get_scale() == 2.0 ** 9
    trainer.optimizer.zero_grad()
    trainer._step(model(torch.ones(1, 2)).sum() * 100)  # gradients (100, 100 | 100) clipped to norm 1, unscaled
    torch.testing.assert_close((model.weight - before).norm(), torch.tensor(0.1 * (2 / 3) ** 0.5))
