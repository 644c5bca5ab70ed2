"""One way to share model work between the coders of one evaluation run.

Metrics whose model passes do not depend on the coder (activations of a labelled set, calibration
rows, clean answers) take a ``cache`` dict kept by the caller (``sparsecodes bench`` keeps one per
run) and compute such values through :func:`memoized`, so several SAEs at one hook run the model
once.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, MutableMapping
from typing import Any, TypeVar

T = TypeVar("T")


def memoized(cache: MutableMapping[Any, Any] | None, key: Hashable, compute: Callable[[], T]) -> T:
    """``cache[key]``, computed by ``compute()`` and stored on the first call; without a cache
    (None) just ``compute()``."""
    if cache is None:
        return compute()
    if key not in cache:
        cache[key] = compute()
    return cache[key]
