"""Identifiability probe: can sparse coding of a network's hidden layer recover the latents that
drive the network?

A synthetic world (:mod:`sparsecodes.worlds`) draws sparse non-negative latents ``h``
``[n, n_features]`` and observes ``x = h D`` ``[n, n_dims]`` (more features than dimensions).
A small network reads ``x``: ``hidden = relu(x W1 + b1)`` ``[n, hidden]``, then a linear head.
Three networks:

- ``trained``: the MLP trained (Adam, seeded) to report which latents are active (multi-label
  logistic loss on ``h > 0``), a task that depends on every latent;
- ``random``: the same MLP at its random initialisation (hidden = a random ReLU feature map);
- ``identity``: no network, ``hidden = x`` (a linear map of the latents: the classic setting of
  sparse dictionary learning).

The hidden activations are then sparse-coded three ways: the hidden ``neurons`` themselves (the
baseline: no coding), a TopK SAE (``k`` = the world's L0) trained on them, and OMP on that SAE's
dictionary at the same ``k`` (an iterative encoder). Recovery is measured on held-out rows:

- ``r2``: linear R^2 from codes to the true latents, a ridge fit on training rows evaluated on
  held-out rows (``1 - SSE / SST`` summed over latents);
- ``mcc``: code MCC (:func:`sparsecodes.metrics.code_mcc`) between codes and true latents.

:func:`run_identifiability` returns a JSON-ready dict; :func:`plot_identifiability` draws it.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sparsecodes.codes import to_dense
from sparsecodes.metrics import code_mcc
from sparsecodes.seeding import derive_seed, generator
from sparsecodes.sparse_coder import SparseCoder
from sparsecodes.worlds import FiringSpec, MagnitudeSpec, World, WorldConfig

logger = logging.getLogger(__name__)

NETWORKS = ("trained", "random", "identity")
CODERS = ("neurons", "topk", "omp")


@dataclass
class IdentifiabilityConfig:
    """Sizes of the probe. ``seeds``: one world, network and coder per seed."""

    n_features: int = 48
    n_dims: int = 24
    l0: float = 3.0
    hidden: int = 48
    net_steps: int = 800
    net_lr: float = 3e-3
    coder_latents: int = 96
    coder_steps: int = 800
    coder_lr: float = 3e-3
    batch_size: int = 256
    n_train: int = 8192
    n_test: int = 4096
    ridge: float = 1e-3
    networks: tuple[str, ...] = NETWORKS
    seeds: tuple[int, ...] = (0, 1, 2)
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        bad = [n for n in self.networks if n not in NETWORKS]
        if bad:
            raise ValueError(f"unknown networks {bad}; choose from {list(NETWORKS)}")
        if not 0 < self.l0 < self.n_features:
            raise ValueError(f"l0 must be in (0, n_features), got {self.l0}")


def make_world(cfg: IdentifiabilityConfig, seed: int) -> World:
    """The seeded world: ``n_features`` features in ``n_dims`` dims, ``exact_k`` firing."""
    return World(
        WorldConfig(
            n_features=cfg.n_features,
            n_dims=cfg.n_dims,
            firing=FiringSpec(l0=cfg.l0, mode="exact_k"),
            magnitude=MagnitudeSpec(mean=1.0, std=0.25),
            seed=seed,
        )
    )


class MLP(nn.Module):
    """``hidden = relu(x W1 + b1)`` ``[n, hidden]``; ``logits = hidden W2 + b2``."""

    def __init__(self, d_in: int, hidden: int, d_out: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(derive_seed(seed, "identifiability-mlp"))
        self.inp = nn.Linear(d_in, hidden)
        self.out = nn.Linear(hidden, d_out)

    def hidden(self, x: Tensor) -> Tensor:
        return torch.relu(self.inp(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.hidden(x))


def train_mlp(net: MLP, x: Tensor, h: Tensor, cfg: IdentifiabilityConfig, seed: int) -> float:
    """Train ``net`` to predict ``h > 0`` from ``x``; returns the last batch's loss."""
    opt = torch.optim.Adam(net.parameters(), lr=cfg.net_lr)
    g = generator(seed, "identifiability-batches")
    target = (h > 0).float()
    loss = torch.zeros(())
    for _ in range(cfg.net_steps):
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=g)
        loss = nn.functional.binary_cross_entropy_with_logits(net(x[idx]), target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def linear_r2(
    codes_train: Tensor, h_train: Tensor, codes_test: Tensor, h_test: Tensor, ridge: float
) -> float:
    """Held-out R^2 of a ridge map (with intercept) from codes ``[n, m]`` to latents
    ``[n, n_features]``: ``1 - SSE / SST`` summed over latents. ``ridge`` is relative to the
    mean diagonal of the codes' Gram matrix."""
    a = codes_train.double()
    mu_a, mu_h = a.mean(0), h_train.double().mean(0)
    a = a - mu_a
    gram = a.T @ a
    lam = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
    w = torch.linalg.solve(
        gram + lam * torch.eye(len(gram), dtype=gram.dtype), a.T @ (h_train.double() - mu_h)
    )
    pred = (codes_test.double() - mu_a) @ w + mu_h
    ht = h_test.double()
    sse = float((ht - pred).pow(2).sum())
    sst = float((ht - ht.mean(0)).pow(2).sum())
    return 1.0 - sse / sst


def probe_hidden(
    hid_train: Tensor,
    hid_test: Tensor,
    h_train: Tensor,
    h_test: Tensor,
    cfg: IdentifiabilityConfig,
    seed: int,
) -> dict[str, dict[str, float]]:
    """Code ``hidden`` activations three ways (``CODERS``); R^2 and MCC of each on held-out
    rows."""
    k = max(1, round(cfg.l0))
    sae = SparseCoder(hid_train.shape[1], cfg.coder_latents, "topk", k=k, seed=seed)
    sae.fit(hid_train, steps=cfg.coder_steps, batch_size=cfg.batch_size, lr=cfg.coder_lr)
    sae.eval()
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for name in CODERS:
            if name == "neurons":
                c_tr, c_te = hid_train, hid_test
            elif name == "topk":
                c_tr, c_te = to_dense(sae.encode(hid_train)), to_dense(sae.encode(hid_test))
            else:
                kw = {"inference": "omp", "k": k, "nonneg": True}
                c_tr = to_dense(sae.encode(hid_train, **kw))
                c_te = to_dense(sae.encode(hid_test, **kw))
            out[name] = {
                "r2": linear_r2(c_tr, h_train, c_te, h_test, cfg.ridge),
                "mcc": float(code_mcc(h_test, c_te)),
            }
    return out


def run_seed(cfg: IdentifiabilityConfig, seed: int) -> dict[str, Any]:
    """Every network of ``cfg.networks`` on one seed's world."""
    world = make_world(cfg, seed)
    tr, te = world.sample(cfg.n_train, stream="train"), world.sample(cfg.n_test, stream="test")
    res: dict[str, Any] = {}
    for kind in cfg.networks:
        if kind == "identity":
            hid_tr, hid_te, loss = tr.x, te.x, None
        else:
            net = MLP(cfg.n_dims, cfg.hidden, cfg.n_features, seed)
            loss = train_mlp(net, tr.x, tr.codes, cfg, seed) if kind == "trained" else None
            with torch.no_grad():
                hid_tr, hid_te = net.hidden(tr.x), net.hidden(te.x)
        res[kind] = probe_hidden(hid_tr, hid_te, tr.codes, te.codes, cfg, seed)
        res[kind]["task_loss"] = loss
        logger.info("seed %d %s: %s", seed, kind, res[kind])
    return res


def run_identifiability(cfg: IdentifiabilityConfig) -> dict[str, Any]:
    """All seeds; ``summary[network][coder][metric] = [mean, std]`` over seeds."""
    cfg.validate()
    runs = {str(seed): run_seed(cfg, seed) for seed in cfg.seeds}
    return {"config": asdict(cfg), "runs": runs, "summary": summarise(runs)}


def summarise(runs: dict[str, Any]) -> dict[str, Any]:
    """``summary[network][coder][metric] = [mean, std]`` over the seeds of ``runs``."""
    seeds = list(runs)
    summary: dict[str, Any] = {}
    for kind in runs[seeds[0]]:
        summary[kind] = {}
        for coder in CODERS:
            summary[kind][coder] = {}
            for metric in ("r2", "mcc"):
                vals = [runs[s][kind][coder][metric] for s in seeds]
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                summary[kind][coder][metric] = [statistics.fmean(vals), sd]
    return summary


def plot_identifiability(result: dict[str, Any]) -> Any:
    """Bar chart: R^2 and MCC (mean ± std over seeds) per network, one bar per coder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    kinds = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    width = 0.8 / len(CODERS)
    for ax, metric, title in zip(
        axes, ("r2", "mcc"), ("linear R² (held-out)", "code MCC"), strict=True
    ):
        for j, coder in enumerate(CODERS):
            means = [summary[k][coder][metric][0] for k in kinds]
            sds = [summary[k][coder][metric][1] for k in kinds]
            xs = [i + (j - (len(CODERS) - 1) / 2) * width for i in range(len(kinds))]
            ax.bar(xs, means, width, yerr=sds, label=coder, capsize=2)
        ax.set_xticks(range(len(kinds)), kinds)
        ax.set_ylim(0, 1)
        ax.set_title(title)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"recovering the latents from a hidden layer ({len(result['runs'])} seeds)")
    fig.tight_layout()
    return fig
