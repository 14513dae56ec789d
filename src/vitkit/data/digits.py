"""scikit-learn's handwritten digits: 1,797 8x8 images, values 0..16, ten classes.

Ships with scikit-learn, so it is the dataset that always works offline: small enough for
smoke tests and tutorials that train in seconds on a CPU.
"""
from __future__ import annotations

import numpy as np
import torch

CLASSES = [str(d) for d in range(10)]
MEAN, STD = (0.3054,), (0.3760,)  # of the 0..255-scaled training split, measured
TEST_FRACTION, SPLIT_SEED = 0.2, 0


def load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N,1,8,8], labels int64 [N])``.

    The 80/20 stratified split is fixed (its own seed, not the run's) so every run is
    evaluated on the same held-out images and train and test never share one.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    d = sk_load_digits()
    idx_train, idx_test = train_test_split(np.arange(len(d.target)), test_size=TEST_FRACTION,
                                           stratify=d.target, random_state=SPLIT_SEED)
    idx = np.sort(idx_train if split == "train" else idx_test)
    images = np.rint(d.images[idx] * (255 / 16)).astype(np.uint8)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(d.target[idx].astype(np.int64))
