"""Pretrained weights by name, from the Hugging Face Hub: the Hub is a source of files, like a local path.

A name resolves to a repo (timm's ``architecture.tag`` to ``timm/architecture.tag``, where timm
publishes it; ``hf-hub:ORG/NAME`` to any repo), the repo's files are fetched into
huggingface_hub's cache (``HF_HUB_CACHE`` or ``HF_HOME``/hub, the one timm and transformers
share: a model either of them downloaded is not downloaded again), and the snapshot folder is
then read as a local folder is: timm's layout (config.json with ``architecture`` and
``pretrained_cfg``) or transformers' (``model_type``, ``preprocessor_config.json``).

huggingface_hub does the downloading: its progress bar, its size check of each download, its
locks, ``HF_HUB_OFFLINE=1`` (the cache only) and ``HF_TOKEN`` for gated repos. All files come
from one commit, the one ``main`` (or the pinned revision) pointed to when config.json was fetched.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import VitkitError
from ..models import get_model_spec, get_pretrained_cfg
from . import hf, timm
from .build import build_model
from .checkpoint import Checkpoint
from .files import read_json

PREFIX = "hf-hub:"


@dataclass(frozen=True)
class HubRef:
    """A repo on the Hub and, optionally, the revision (branch, tag or commit) to read it at."""
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")

    @property
    def name(self) -> str:
        """The repo's own name, for files written on its behalf (``vit_base_patch16_224.augreg_in1k``)."""
        return self.repo_id.rpartition("/")[2]


def is_hub_ref(location: object) -> bool:
    """Whether a checkpoint location is ``hf-hub:ORG/NAME[@REV]`` rather than a path."""
    return isinstance(location, str) and location.startswith(PREFIX)


def resolve(name: str, revision: str | None = None) -> HubRef:
    """The repo that pretrained weights' name stands for.

    ``hf-hub:ORG/NAME`` is that repo; timm's ``architecture.tag`` is ``timm/architecture.tag``;
    a bare ``architecture`` means its default weights (the first tag ``vitkit models --pretrained``
    lists for it, as in timm). ``@REV`` after any of them, or ``revision``, pins a branch, tag or commit.
    """
    body, _, pinned = name.strip().partition("@")
    if pinned and revision and pinned != revision:
        raise VitkitError(f"{name}: pinned to {pinned!r} in the name and to {revision!r} by revision; give one")
    revision = revision or pinned or None
    if body.startswith(PREFIX):
        return _checked(HubRef(body[len(PREFIX):], revision), name)
    if "/" in body:
        raise VitkitError(f"{name}: a Hugging Face Hub repo is named hf-hub:{body}")
    architecture, _, tag = body.partition(".")
    try:
        get_model_spec(architecture)
    except ValueError as e:
        raise VitkitError(f"{name}: {e}") from None
    known = get_pretrained_cfg(body)
    if known is None and not tag:
        raise VitkitError(f"{name}: vitkit knows no pretrained weights for {architecture}; name them "
                          f"{architecture}.TAG (timm's tag) or hf-hub:ORG/NAME (`vitkit models --pretrained` lists "
                          "those it knows)")
    return _checked(HubRef(known.hf_hub_id if known else f"timm/{body}", revision), name)


def _checked(ref: HubRef, name: str) -> HubRef:
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(ref.repo_id)
    except HFValidationError:
        raise VitkitError(f"{name}: {ref.repo_id!r} is not a Hub repo name (ORG/NAME)") from None
    return ref


def load_pretrained(name: str, revision: str | None = None, cache_dir: str | Path | None = None,
                    **overrides: Any) -> nn.Module:
    """The model of pretrained weights named as :func:`resolve` reads names, downloaded if not cached.

    ``overrides`` are :func:`vitkit.weights.load_model`'s (``num_classes=10``: a fresh head for
    fine-tuning; ``img_size=384``: resampled position embeddings). ``model.checkpoint_meta``
    holds the class names, the normalisation and the eval crop the weights come with, and the
    commit they were read at (``revision``).
    """
    return build_model(read_checkpoint(resolve(name, revision), cache_dir), None, **overrides)


def read_checkpoint(ref: HubRef | str, cache_dir: str | Path | None = None) -> Checkpoint:
    """The repo's weights as a :class:`Checkpoint`; errors name the repo, not the cache folder."""
    from . import read_checkpoint as read_local  # the package reads folders; it imports this module

    ref = resolve(ref) if isinstance(ref, str) else ref
    folder = fetch(ref, cache_dir)
    try:
        ckpt = read_local(folder)
    except VitkitError as e:
        _check_cached_files(folder, ref)  # a damaged download explains a file that does not read
        raise VitkitError(str(e).replace(str(folder), str(ref))) from None
    ckpt.source = str(ref)
    ckpt.meta["revision"] = folder.name  # the commit: `hf-hub:...@<revision>` gets these very files again
    return ckpt


def fetch(ref: HubRef, cache_dir: str | Path | None = None) -> Path:
    """The snapshot folder holding what vitkit reads of the repo: config.json, the weights, and
    a transformers repo's preprocessor_config.json. Nothing is downloaded that is cached already."""
    config_file = _download(ref, "config.json", ref.revision, cache_dir)
    commit = config_file.parent.name  # snapshots/<commit>/config.json: every other file from the same commit
    config = read_json(config_file)
    _check_readable(config, ref)
    if not timm.is_timm_config(config):
        _optional(ref, "preprocessor_config.json", commit, cache_dir)
    weights = _first(ref, timm.WEIGHTS_FILES if timm.is_timm_config(config) else hf.WEIGHTS_FILES, commit, cache_dir)
    if weights.name.endswith(".index.json"):  # sharded: the index names the shards
        for shard in sorted(set(read_json(weights).get("weight_map", {}).values())):
            _download(ref, shard, commit, cache_dir)
    return config_file.parent


def _check_readable(config: dict[str, Any], ref: HubRef) -> None:
    """Refuse before downloading the weights what vitkit could not build."""
    if timm.is_timm_config(config):
        try:
            get_model_spec(config["architecture"])
        except ValueError:
            raise VitkitError(f"{ref}: architecture {config['architecture']!r} is not in vitkit (yet); `vitkit "
                              "models` lists those it has") from None
    elif "model_type" in config:
        hf.check_config(config, str(ref))
    else:
        raise VitkitError(f"{ref}: config.json is neither timm's (architecture) nor transformers' (model_type)")


class _Missing(Exception):
    """A file the repo does not have, or that is not cached while the Hub cannot be reached."""

    def __init__(self, filename: str, cached_only: bool):
        super().__init__(filename)
        self.filename, self.cached_only = filename, cached_only


def _first(ref: HubRef, names: tuple[str, ...], revision: str, cache_dir: str | Path | None) -> Path:
    missing = []
    for name in names:
        try:
            return _get(ref, name, revision, cache_dir)
        except _Missing as e:
            missing.append(e)
    if any(e.cached_only for e in missing):
        raise _not_cached(ref, names, cache_dir)
    raise VitkitError(f"{ref}: the repo has no weights vitkit reads ({', '.join(names)})")


def _optional(ref: HubRef, name: str, revision: str, cache_dir: str | Path | None) -> Path | None:
    try:
        return _get(ref, name, revision, cache_dir)
    except _Missing:
        return None


def _download(ref: HubRef, name: str, revision: str | None, cache_dir: str | Path | None) -> Path:
    try:
        return _get(ref, name, revision, cache_dir)
    except _Missing as e:
        if e.cached_only:
            raise _not_cached(ref, (name,), cache_dir) from None
        raise VitkitError(f"{ref}: the repo has no {name}" + (" (not a model timm or transformers can load)"
                                                             if name == "config.json" else "")) from None


def _get(ref: HubRef, name: str, revision: str | None, cache_dir: str | Path | None) -> Path:
    """The cached file, downloaded if need be; huggingface_hub's failures as one line naming the repo."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                       RepositoryNotFoundError, RevisionNotFoundError)

    from .. import __version__
    try:
        return Path(hf_hub_download(ref.repo_id, name, revision=revision, cache_dir=cache_dir,
                                    library_name="vitkit", library_version=__version__))
    except LocalEntryNotFoundError:  # (a kind of EntryNotFoundError) offline or unreachable, and not cached
        raise _Missing(name, cached_only=True) from None
    except EntryNotFoundError:
        raise _Missing(name, cached_only=False) from None
    except GatedRepoError:
        raise VitkitError(f"{ref}: the repo is gated: accept its terms on its Hub page, then log in (`hf auth "
                          "login`, or set HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise VitkitError(f"{ref}: no such repo on the Hugging Face Hub (or a private one: log in with `hf auth "
                          "login`, or set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise VitkitError(f"{ref}: the repo has no revision {revision!r}") from None
    except OSError as e:  # HTTP errors, a full disk, a failed size check of the download
        raise VitkitError(f"{ref}: cannot download {name} ({_first_line(e)})") from None


def _not_cached(ref: HubRef, names: tuple[str, ...], cache_dir: str | Path | None) -> VitkitError:
    from huggingface_hub import constants

    cache = cache_dir or constants.HF_HUB_CACHE
    what = f"{names[0]} is not" if len(names) == 1 else f"none of {', '.join(names)} is"
    why = ("HF_HUB_OFFLINE=1 forbids downloading" if constants.HF_HUB_OFFLINE
           else "the Hugging Face Hub cannot be reached")
    return VitkitError(f"{ref}: {what} in the cache ({cache}) and {why}; download it where the Hub is "
                       "reachable, into that cache")


def _check_cached_files(folder: Path, ref: HubRef) -> None:
    """The cache names each file by its hash (sha256 for large files, git's blob sha1 for small
    ones): a file that no longer hashes to its name was damaged after download (a disk error, an
    interrupted copy of the cache). Where the cache holds copies instead of links, there is no name to check."""
    for link in sorted(folder.iterdir()):
        blob = link.resolve()
        if link.is_symlink() and blob.is_file() and not _hashes_to_its_name(blob):
            raise VitkitError(f"{ref}: the cached {link.name} is damaged (truncated or changed since it was "
                              f"downloaded); delete {blob} and load again to download it anew")


def _hashes_to_its_name(blob: Path) -> bool:
    if len(blob.name) == 64:
        digest = hashlib.sha256()
    elif len(blob.name) == 40:
        digest = hashlib.sha1(f"blob {blob.stat().st_size}\0".encode())
    else:
        return True  # not named by a hash we know
    with open(blob, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == blob.name


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
