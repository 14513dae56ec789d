"""ImageNet-1k's class names, shipped with vitkit: the head of most pretrained weights is indexed by them.

``imagenet_classes.txt`` lists the 1000 WordNet synsets in the standard (sorted) order with
their lemmas ("n02123045<TAB>tabby, tabby cat"), as timm's ``imagenet_synsets.txt`` and
``imagenet_synset_to_lemma.txt`` give them; Hugging Face's ViT configs carry the same names
in ``id2label``. Weights whose config names its classes use those names instead.
"""
from __future__ import annotations

import functools
from importlib import resources

IMAGENET_1K_CLASSES = 1000


@functools.cache
def _table() -> tuple[tuple[str, str], ...]:
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line)


def imagenet_classes() -> list[str]:
    """The 1000 class names in index order ("tench, Tinca tinca", ..., "toilet tissue, ...").
    Two synsets share the lemma "crane" (the bird, 134, and the machine, 517), as in the standard list."""
    return [name for _, name in _table()]


def imagenet_synsets() -> list[str]:
    """The 1000 WordNet ids in index order ("n01440764", ...): the label names timm's configs may give."""
    return [synset for synset, _ in _table()]


def imagenet_folders(folder_classes: list[str], model_classes: list[str]) -> bool:
    """Whether a folder of class folders named by synset (ImageNet's own layout: val/n01440764/...)
    holds the classes of a model that names them in words: sorted, the synsets are the standard order."""
    return list(folder_classes) == imagenet_synsets() and len(model_classes) == IMAGENET_1K_CLASSES and \
        [c.rsplit(" (", 1)[0] for c in model_classes] == imagenet_classes()  # "crane (134)": made distinct
