"""MAE's figure: for each image the original, the masked input, the reconstruction, and the
reconstruction with the visible patches pasted back (He et al., 2021, Fig. 2).

What the encoder saw is exactly the visible patches, so the last column shows what the model
inferred for the rest; the third also shows how it redraws what it was given.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..data import normalize  # noqa: E402
from ..fileio import save_figure  # noqa: E402

COLUMNS = ("original", "masked", "reconstruction", "reconstruction + visible")


@torch.no_grad()
def reconstructions(model: torch.nn.Module, images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                    mask_ratio: float = 0.75, seed: int = 0) -> torch.Tensor:
    """uint8 images [B, C, H, W] -> [B, 4, C, H, W] in [0, 1]: the four columns of the figure."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = normalize(images.to(device), mean, std)
    noise = torch.rand(len(x), model.patch_embed.num_patches, generator=torch.Generator().manual_seed(seed))
    _, pred, mask = model(x, mask_ratio=mask_ratio, noise=noise.to(device))
    model.train(was_training)
    x, pred, mask = x.cpu(), pred.float().cpu(), mask.cpu()
    p = model.patch_embed.patch_size[0]
    recon = model.reconstruct(x, pred)
    removed = mask.reshape(len(x), *model.grid_size).repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None]
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    to_pixels = lambda t: (t * s + m).clamp(0, 1)  # noqa: E731
    original = to_pixels(x)
    masked = original * (1 - removed) + 0.5 * removed  # removed patches grey
    recon = to_pixels(recon)
    pasted = original * (1 - removed) + recon * removed
    return torch.stack([original, masked, recon, pasted], dim=1)


def save_reconstructions(model: torch.nn.Module, images: torch.Tensor, mean: tuple[float, ...],
                         std: tuple[float, ...], path: str | Path, mask_ratio: float = 0.75, seed: int = 0) -> Path:
    """The figure as a PNG: one row per image, the four columns of :data:`COLUMNS`."""
    panels = reconstructions(model, images, mean, std, mask_ratio, seed)
    rows = len(panels)
    fig, axes = plt.subplots(rows, 4, figsize=(6.4, 1.6 * rows + 0.3), squeeze=False)
    for r in range(rows):
        for c in range(4):
            ax = axes[r, c]
            img = panels[r, c].permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(COLUMNS[c], fontsize=8)
    fig.suptitle(f"MAE reconstructions, {round(100 * mask_ratio)}% of patches masked", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
