"""Shared fixtures: small synthetic sparse data made directly (independent of synthetic.py), and a
small fake activation store."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparsecodes.activations import StoreWriter

torch.set_num_threads(min(2, torch.get_num_threads()))


def in_ci() -> bool:
    """True under CI (``CI=true``), where every optional package and model must be installed."""
    return os.environ.get("CI") == "true"


def missing(reason: str) -> None:
    """Skip the calling test for a missing optional piece; under ``CI=true``, fail it instead.

    CI installs every extra (``bash scripts/install.sh --test``), so there a missing package is a
    broken install or an undeclared dependency, never a reason to skip.
    """
    if in_ci():
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(module: str, reason: str | None = None) -> ModuleType:
    """``pytest.importorskip(module)``, except that under ``CI=true`` a missing module fails."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing(reason or f"{module} is not installed ({e})")
        raise  # unreachable: missing() raises


def require_model(name: str) -> None:
    """Skip (fail under ``CI=true``) unless the embedded model package ``name`` is installed."""
    from sparsecodes.models import is_installed

    if not is_installed(name):
        missing(f"the embedded model {name!r} is not installed (bash scripts/install.sh)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires(*modules): needs these optional modules (see conftest.require)"
    )
    config.addinivalue_line(
        "markers", "requires_model(name): needs this embedded model (see conftest.require_model)"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        for module in mark.args:
            require(module)
    for mark in item.iter_markers("requires_model"):
        require_model(*mark.args)


def sparse_problem(n: int = 16, m: int = 8, k: int = 3, s: int = 1024, seed: int = 0):
    """Codes [s, n] with k active |N(0,1)| entries, unit-norm atoms [n, m], x = codes @ atoms."""
    g = torch.Generator().manual_seed(seed)
    atoms = F.normalize(torch.randn(n, m, generator=g), dim=1)
    idx = torch.rand(s, n, generator=g).argsort(dim=1)[:, :k]
    codes = torch.zeros(s, n).scatter_(1, idx, torch.randn(s, k, generator=g).abs())
    return codes @ atoms, codes, atoms


def fake_store(
    path: Path, hook: str = "blocks.0.resid_post", rows: int = 3000, d: int = 16
) -> Path:
    """A finished activation store of ``rows`` seeded Gaussian vectors ``[rows, d]`` at ``path``."""
    w = StoreWriter(
        path,
        model="fake",
        hook=hook,
        shape=(d,),
        dtype="float32",
        corpus_fingerprint="abc",
        context_size=8,
        shard_rows=1024,
    )
    w.append(np.random.default_rng(0).standard_normal((rows, d)).astype(np.float32) * 3 + 1)
    w.close()
    return path


@pytest.fixture
def small_problem():
    return sparse_problem()


@pytest.fixture(autouse=True)
def _restore_torch_global_state():
    """No test may leak torch's global modes (grad mode, thread count) into the next one."""
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    yield
    leaked = not torch.is_grad_enabled() and grad
    torch.set_grad_enabled(grad)
    torch.set_num_threads(threads)
    assert not leaked, "a test left torch grad mode disabled"


#: a small vocabulary for made-up corpora in CLI and browser tests
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "def",
    "class",
    "return",
    "import",
    "print",
    "value",
    "token",
    "model",
]


class TranscoderMLP(torch.nn.Module):
    """An MLP replaced by a transcoder: a model whose MLPs *are* their transcoders (zero error)."""

    def __init__(self, tc):
        super().__init__()
        self.tc = tc

    def forward(self, x):
        return self.tc(x)


def live_stream_windows(context_size: int, *rows: int) -> int:
    """Windows a :class:`~sparsecodes.activations.live.LiveModelSource` over the embedded corpus
    (tiny-llama's tokenizer, the default ``windows_per_pass``) runs through the model to deliver
    each of ``rows`` from the stream's start: whole passes, each a batch of windows."""
    import inspect

    from sparsecodes.activations.live import LiveModelSource
    from sparsecodes.data import batch_windows, load_texts, token_windows
    from sparsecodes.models import load_model

    per_pass = inspect.signature(LiveModelSource).parameters["windows_per_pass"].default
    windows = token_windows(load_texts(None), load_model("tiny-llama").tokenizer, context_size)
    passes = [
        (int(ids.shape[0]), int(keep.sum())) for ids, keep in batch_windows(windows, per_pass)
    ]
    total = 0
    for want in rows:
        got = 0
        for n_windows, n_rows in passes:
            total, got = total + n_windows, got + n_rows
            if got >= want:
                break
        else:
            raise AssertionError(f"the corpus has fewer than {want} rows")
    return total


@pytest.fixture
def embedded_windows():
    """``[n]``: windows (rows of token ids) through any model's token embedding while the test
    runs. A forward pass over B windows adds B however it is split over threads
    (``ModelAdapter.run(workers=n)``), so n counts the work of the forward passes."""
    import threading

    from torch.nn.modules.module import register_module_forward_pre_hook

    seen, lock = [0], threading.Lock()

    def count(module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, torch.nn.Embedding):
            with lock:
                seen[0] += int(args[0].shape[0])

    handle = register_module_forward_pre_hook(count)
    yield seen
    handle.remove()


@pytest.fixture
def openblas():
    """The process's GEMM backend set to ``"openblas"`` (``sparsecodes.kernels.gemm``) for the
    test, restored after; skipped (failed under CI) where numpy is not built with OpenBLAS."""
    from sparsecodes.kernels import gemm

    try:
        gemm.resolve_gemm_backend("openblas")
    except ValueError:
        missing("numpy is not built with OpenBLAS here")
    before = gemm.gemm_backend()
    gemm.set_gemm_backend("openblas")
    yield
    gemm.set_gemm_backend(before)


@pytest.fixture
def openblas_small(openblas, monkeypatch):
    """:func:`openblas`, with every product sent there, however small (the tiny models')."""
    from sparsecodes.kernels import gemm

    monkeypatch.setattr(gemm, "MIN_MACS", 0)
