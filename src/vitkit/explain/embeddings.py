"""What the embedding layers learned, read from the weights alone (ViT paper, Fig. 7 left and centre).

* Patch-embedding filters: the conv ``[D, C, P, P]`` is D linear filters over a P×P
  patch (SL-ViT's shifted patch tokens: over the 2P×2P window a token sees); the top
  principal components of those D vectors show the basis the model projects patches
  onto (in trained models: smooth, Gabor-like functions).
* Position-embedding similarity: cosine similarity of each patch position's embedding
  with every other one; a trained ViT shows rows/columns and distance structure in
  these maps, i.e. it learned the 2-D topology from 1-D embeddings.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .tokens import check_vit


def filter_components(model: nn.Module, n: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``n`` principal components of the patch-embedding filters, and their explained-variance ratios.

    Returns ``(components [n, C, P, P], ratios [n])``; ``n`` is capped at the number of
    components that exist (min(D, C·P·P)). Filters are centred before the SVD, as PCA does.
    """
    w = image_filters(model)
    if w is None:
        raise ValueError("the patch embedding does not project image pixels (a hybrid's projects CNN features)")
    d, c, ph, pw = w.shape
    flat = w.reshape(d, c * ph * pw)
    flat = flat - flat.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(flat, full_matrices=False)
    n = min(n, vh.shape[0])
    var = s ** 2
    return vh[:n].reshape(n, c, ph, pw), var[:n] / var.sum().clamp_min(1e-12)


def image_filters(model: nn.Module) -> torch.Tensor | None:
    """The patch embedding as D filters over image pixels [D, C, P, P]; ``None`` for a hybrid,
    whose projection reads CNN feature channels and so has no picture to show."""
    embed = check_vit(model).patch_embed
    if hasattr(embed, "backbone"):
        return None
    return (embed.filters() if hasattr(embed, "filters") else embed.proj.weight).detach().float()


def pos_embed_similarity(model: nn.Module) -> torch.Tensor:
    """Cosine similarity between patch position embeddings: [gh, gw, gh, gw].

    ``sim[i, j]`` is the gh×gw map of how similar position (i, j) is to every position;
    prefix tokens' embeddings are left out. The grid is the one the embeddings were
    learned at (the model's ``grid_size``).
    """
    gh, gw = check_vit(model).patch_embed.grid_size
    pos = model.pos_embed.detach().float()[0, -gh * gw:]  # patch entries come last
    pos = F.normalize(pos, dim=-1)
    return (pos @ pos.T).reshape(gh, gw, gh, gw)
