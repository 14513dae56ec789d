"""Which blocks or stages ``forward_intermediates`` returns, as timm's ``feature_take_indices`` decides."""
from __future__ import annotations

from collections.abc import Sequence


def feature_take_indices(num_features: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """(sorted indices to return, the last one): ``None`` takes all, an int n the last n, a sequence
    those indices (negative ones count from the end)."""
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"indices={indices}: take between 1 and {num_features} of the {num_features} outputs")
        take = list(range(num_features - indices, num_features))
    else:
        take = sorted({i + num_features if i < 0 else i for i in indices})
        bad = [i for i in take if not 0 <= i < num_features]
        if bad or not take:
            raise ValueError(f"indices={list(indices)}: each must lie in [-{num_features}, {num_features - 1}]")
    return take, take[-1]
