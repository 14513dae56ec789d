"""Building blocks shared by every vitkit model.

Names and parameter layouts follow timm's ``vision_transformer.py`` (``attn.qkv``,
``mlp.fc1``, ``ls1.gamma``, ...) so that state dicts from the ecosystem load without
renaming.
"""
from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Called with (attention module, attention probabilities [B, heads, N, N]) when set.
AttentionHook = Callable[[nn.Module, torch.Tensor], None]


PatchFormat = Literal["NLC", "NHWC", "NCHW"]


def format_patches(x: torch.Tensor, fmt: PatchFormat) -> torch.Tensor:
    """Patch tokens [B, H, W, D] in the layout asked for: "NLC" [B, H*W, D], "NHWC", or "NCHW"."""
    if fmt == "NLC":
        return x.flatten(1, 2)
    return x.permute(0, 3, 1, 2) if fmt == "NCHW" else x


def patch_maps(tokens: torch.Tensor, grid: tuple[int, int], fmt: PatchFormat = "NCHW") -> torch.Tensor:
    """Patch tokens [B, H*W, D] (row by row) as feature maps in the layout asked for (see ``format_patches``)."""
    if fmt not in ("NLC", "NHWC", "NCHW"):
        raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {fmt!r}")
    return format_patches(tokens.reshape(tokens.shape[0], grid[0], grid[1], -1), fmt)


def feature_take_indices(num_blocks: int, indices: int | Sequence[int] | None = None) -> list[int]:
    """The blocks whose outputs ``forward_intermediates`` returns, as timm picks them: None every block,
    an int n the last n, a sequence those blocks (negative indices count from the end); in forward order."""
    if indices is None:
        return list(range(num_blocks))
    if isinstance(indices, int):
        if not 0 < indices <= num_blocks:
            raise ValueError(f"cannot take the last {indices} of {num_blocks} blocks")
        return list(range(num_blocks - indices, num_blocks))
    bad = [i for i in indices if not -num_blocks <= i < num_blocks]
    if bad:
        raise ValueError(f"block index {bad[0]} is out of range for {num_blocks} blocks")
    return sorted({i % num_blocks for i in indices})


def to_2tuple(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


class PatchEmbed(nn.Module):
    """Cut an image into P×P patches and project each to D dims (a conv, kernel = stride = P)."""

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int | tuple[int, int] = 16,
                 in_chans: int = 3, embed_dim: int = 768, bias: bool = True, strict_img_size: bool = True,
                 flatten: bool = True, output_fmt: PatchFormat | None = None,
                 norm_layer: Callable[[int], nn.Module] | None = None):
        super().__init__()
        self.output_fmt: PatchFormat = output_fmt or ("NLC" if flatten else "NCHW")
        if self.output_fmt not in ("NLC", "NHWC", "NCHW"):
            raise ValueError(f"output_fmt must be 'NLC', 'NHWC' or 'NCHW', got {output_fmt!r}")
        self.in_chans = in_chans
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = strict_img_size
        if strict_img_size and (self.img_size[0] % self.patch_size[0] or self.img_size[1] % self.patch_size[1]):
            raise ValueError(f"image size {img_size} is not divisible by the patch size {patch_size}")
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()  # timm's; Swin normalises its patches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, N, D] as timm's; ``output_fmt="NHWC"`` keeps the grid (ViT asks for it to
        match position embeddings to any input size), ``"NCHW"`` gives the conv's own layout."""
        self.check_input(x)
        return format_patches(self.norm(self.proj(x).permute(0, 2, 3, 1)), self.output_fmt)

    def check_input(self, x: torch.Tensor) -> None:
        _, c, h, w = x.shape
        if c != self.in_chans:
            raise ValueError(f"model expects {self.in_chans} input channels, got {c}")
        if self.strict_img_size and (h, w) != self.img_size:
            raise ValueError(f"model expects {self.img_size[0]}x{self.img_size[1]} input, got {h}x{w} "
                             "(build it with dynamic_img_size=True to accept other sizes)")
        if h % self.patch_size[0] or w % self.patch_size[1]:
            raise ValueError(f"input {h}x{w} is not divisible by patch size {self.patch_size}")


class Attention(nn.Module):
    """Multi-head self-attention with a fused q/k/v projection.

    Inference uses ``F.scaled_dot_product_attention``. Two cases take the explicit
    softmax(QKᵀ/√d)V path instead: an ``attn_hook`` is set (the probabilities are handed to
    it, so a caller can fold layers one at a time in bounded memory), or gradients flow on
    a CPU, where the fused kernel's backward measured 2.7x slower in bf16 (same in fp32).
    ``fused_attn=False`` forces the explicit path. ``matmul_dtype`` (set by
    ``prepare_for_inference`` for bf16 and int8) runs that explicit path in bf16: for ViT's
    short sequences two bf16 batched matmuls and a softmax beat SDPA's CPU kernel (ViT-B/16
    attention at batch 8 on the AMD EPYC: 8.7 ms per block against 10.6 for fp32 SDPA and
    12.6 for bf16 SDPA).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.attn_hook: AttentionHook | None = None
        self.fused_attn = True
        self.matmul_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor, queries: int | None = None) -> torch.Tensor:
        """``queries=m``: only the first m tokens attend (to all n); the output is [B, m, D]."""
        b, n, c = x.shape
        qkv = self.qkv(x)
        out_dtype = qkv.dtype
        if self.matmul_dtype is not None:
            qkv = qkv.to(self.matmul_dtype)
        qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if queries is not None:
            q, n = q[:, :, :queries], queries
        if self.attn_hook is None and self._use_fused(x):
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = self.attention_probs(q, k)
            if self.attn_hook is not None:
                self.attn_hook(self, attn)
            x = self.attn_drop(attn) @ v
        x = x.transpose(1, 2).reshape(b, n, c).to(out_dtype)
        return self.proj_drop(self.proj(x))

    @torch.no_grad()
    def init_mimetic(self, qk: float = 0.7, vo: float = 0.4) -> None:
        """Mimetic initialisation (Trockman & Kolter 2023): each head's W_q W_kᵀ starts near
        qk·(Z + I) and the joint W_v W_o near vo·(Z − I), Z random with variance 1/D, the products
        pretrained ViTs show. Tokens then start out attending to similar tokens and subtracting
        their mix from the residual, which small-data training otherwise has to discover."""
        dim, hd = self.proj.in_features, self.head_dim
        w = self.qkv.weight  # rows: q, k, v, each [D, D], heads in blocks of head_dim
        for h in range(self.num_heads):
            left, right = _factor_near_identity(dim, qk, +1.0)
            w[h * hd:(h + 1) * hd] = left[:, :hd].T
            w[dim + h * hd:dim + (h + 1) * hd] = right[:hd]
        left, right = _factor_near_identity(dim, vo, -1.0)
        w[2 * dim:] = left.T
        self.proj.weight.copy_(right.T)

    def attention_probs(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """softmax(QKᵀ/√d): [B, heads, m, d] x [B, heads, n, d] -> [B, heads, m, n]."""
        return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)

    def _use_fused(self, x: torch.Tensor) -> bool:
        if not self.fused_attn or self.matmul_dtype is not None:
            return False
        return not (x.device.type == "cpu" and x.requires_grad and torch.is_grad_enabled())


def _factor_near_identity(dim: int, scale: float, sign: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L, R with L @ R = scale·(Z + sign·I), Z uniform with variance 1/dim; the SVD splits the
    singular values evenly between the two, so truncating both to the top k columns/rows keeps
    the best rank-k approximation."""
    bound = (3 / dim) ** 0.5
    a = scale * (torch.empty(dim, dim).uniform_(-bound, bound) + sign * torch.eye(dim))
    u, s, vh = torch.linalg.svd(a)
    return u * s.sqrt(), s.sqrt()[:, None] * vh


class Mlp(nn.Module):
    """Two linear layers with a GELU between: the Transformer's position-wise feed-forward."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


def new_head(dim: int, num_classes: int, zero_init: bool = False) -> nn.Module:
    """A ``dim`` -> ``num_classes`` linear head (truncated normal, or zeros), Identity for 0 classes."""
    if num_classes <= 0:
        return nn.Identity()
    head = nn.Linear(dim, num_classes)
    if zero_init:
        nn.init.zeros_(head.weight)
    else:
        nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


def init_linears(model: nn.Module) -> None:
    """timm's ``_init_weights`` of CaiT, ConViT and CrossViT: linears truncated normal (std 0.02), zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class AttentionPoolLatent(nn.Module):
    """Pool tokens by attention from a learned query (timm's ``global_pool='map'``, SigLIP's head).

    Where the mean weighs every token alike, the query learns which tokens matter, and a
    residual MLP refines the pooled feature (Compact Transformers' SeqPool is the one-head,
    MLP-free case). Parameter names are timm's: ``latent``, ``q``, ``kv``, ``proj``, ``norm``, ``mlp``.
    """

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_eps: float = 1e-6):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.latent, std=dim ** -0.5)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.attn_hook: AttentionHook | None = None  # gets the query's weights [B, heads, 1, N]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, D] tokens -> [B, D]."""
        b, n, d = x.shape
        q = self.q(self.latent).reshape(1, 1, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        weights = ((q * self.head_dim ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, heads, 1, N]
        if self.attn_hook is not None:
            self.attn_hook(self, weights)
        x = self.proj((weights @ v).transpose(1, 2).reshape(b, d))
        return x + self.mlp(self.norm(x))


class LayerScale(nn.Module):
    """Per-channel learnable residual scale (CaiT); ``gamma`` as timm names it."""

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's whole residual branch, rescaling the survivors."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class PatchDropout(nn.Module):
    """Training sees a random ``1 - prob`` share of each image's patch tokens (Liu et al. 2022, timm's
    ``patch_drop_rate``): attention and MLP cost fall with the tokens, so an hour buys more epochs, and
    the missing patches act as augmentation. Prefix tokens ([class], distillation) always stay; at
    evaluation every token is kept."""

    def __init__(self, prob: float = 0.0, num_prefix_tokens: int = 1):
        super().__init__()
        if not 0.0 <= prob < 1.0:
            raise ValueError(f"patch_drop_rate must be in [0, 1), got {prob}")
        self.prob = prob
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.prob == 0.0:
            return x
        prefix, patches = x[:, :self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        b, n, d = patches.shape
        keep = torch.rand(b, n, device=x.device).argsort(dim=1)[:, :max(1, int(n * (1.0 - self.prob)))]
        return torch.cat([prefix, patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, d))], dim=1)

    def extra_repr(self) -> str:
        return f"prob={self.prob}"


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 init_values: float | None = None, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, norm_eps: float = 1e-6, attn_layer: type[Attention] | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = (attn_layer or Attention)(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                              proj_drop=proj_drop)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, queries: int | None = None) -> torch.Tensor:
        """``queries=m`` updates only the first m tokens (attending to all): the last block of a
        model whose head reads only its prefix tokens needs nothing else."""
        attended = self.attn(self.norm1(x), queries)
        x = x if queries is None else x[:, :queries]
        x = x + self.drop_path1(self.ls1(attended))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
