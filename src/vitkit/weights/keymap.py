"""Rename tensors between a foreign layout and timm's, from one table per layout.

A table lists (foreign module, timm module) pairs; ``{i}`` stands for a block index (``{j}``
for a second one: a block within a stage) and whatever follows the module name (``.weight``,
``.bias``) is carried over. The same table serves both directions, so an exporter cannot
drift from its importer. Foreign layouts keep query/key/value apart; timm fuses them into
``attn.qkv``, so conversions go through ``attn.q`` / ``attn.k`` / ``attn.v`` and
:func:`fuse_qkv` / :func:`split_qkv`.
"""
from __future__ import annotations

import re

import torch

from ..errors import VitkitError
from .files import StateDict

Table = list[tuple[str, str]]
_QKV = re.compile(r"^(blocks\.\d+\.attn\.)([qkv])\.(weight|bias)$")


def _compile(pattern: str) -> re.Pattern:
    indices = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    return re.compile("^" + indices + r"(?P<rest>(\..+)?)$")


def rename(sd: StateDict, table: Table, reverse: bool = False) -> tuple[StateDict, list[str]]:
    """Renamed tensors, plus the keys no row matched (the caller decides if that is an error)."""
    rows = [(_compile(b), a) if reverse else (_compile(a), b) for a, b in table]
    out, unmatched = {}, []
    for key, value in sd.items():
        for regex, target in rows:
            m = regex.match(key)
            if m:
                found = m.groupdict()
                out[target.replace("{i}", found.get("i") or "").replace("{j}", found.get("j") or "")
                    + m.group("rest")] = value
                break
        else:
            unmatched.append(key)
    return out, unmatched


def fuse_qkv(sd: StateDict) -> StateDict:
    """``attn.q/k/v.{weight,bias}`` -> ``attn.qkv.{weight,bias}`` (concatenated q, k, v)."""
    out, parts = {}, {}
    for key, value in sd.items():
        m = _QKV.match(key)
        if m:
            parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
        else:
            out[key] = value
    for (prefix, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise VitkitError(f"{prefix}{kind}: query, key and value must all be present, found only {sorted(qkv)}")
        out[f"{prefix}qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    return out


def split_qkv(sd: StateDict) -> StateDict:
    """Inverse of :func:`fuse_qkv`."""
    out = {}
    for key, value in sd.items():
        m = re.match(r"^(blocks\.\d+\.attn\.)qkv\.(weight|bias)$", key)
        if m:
            for name, part in zip("qkv", value.chunk(3)):
                out[f"{m.group(1)}{name}.{m.group(2)}"] = part.contiguous()
        else:
            out[key] = value
    return out
