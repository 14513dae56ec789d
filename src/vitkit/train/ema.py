"""Exponential moving average of the weights (Polyak averaging), as DeiT and timm train with.

The average of the last ~1/(1 - decay) steps' weights sits in a flatter part of the loss
than the last step's, so it usually evaluates better, most of all with noisy, heavily
augmented training. torch's ``AveragedModel`` does the averaging (buffers too, so
BatchNorm statistics follow); this module only fixes the choices.
"""
from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def create_ema(model: nn.Module, decay: float) -> AveragedModel:
    """A copy of ``model`` whose ``update_parameters(model)`` moves it by ``1 - decay`` towards the model.

    Choose ``decay`` so the horizon 1/(1 - decay) is a few epochs of steps: DeiT's 0.99996
    suits 300 ImageNet epochs; a 20-epoch Fashion-MNIST run (4,700 steps) wants ~0.999.
    """
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
