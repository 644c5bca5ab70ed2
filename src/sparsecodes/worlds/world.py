"""A built synthetic world: its dictionary, firing probabilities, trees, and sample streams.

Samples are drawn in fixed blocks of ``config.block_rows`` rows; block ``b`` of stream ``s`` has
its own generator seeded from ``(seed, s, b)``. So a stream is one fixed sequence of rows however
it is chunked (any ``batch_size``, any ``start``), and memory is bounded by one block of
``[block_rows, n_features]`` temporaries: the codes are kept sparse (active entries only).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsecodes.codes import SparseCodes
from sparsecodes.seeding import generator
from sparsecodes.synthetic import SyntheticData
from sparsecodes.worlds.config import WorldConfig

__all__ = ["Block", "TreeLevel", "World", "WorldBatch", "firing_probabilities"]


@dataclass(frozen=True)
class TreeLevel:
    """One level of the forest: ``parents`` ``[P]`` and their ``children`` ``[P, C]``."""

    parents: Tensor
    children: Tensor


@dataclass(frozen=True)
class Block:
    """Active entries of a block of rows, row-major: ``rows``, ``cols``, ``values`` ``[nnz]``."""

    x: Tensor
    rows: Tensor
    cols: Tensor
    values: Tensor


@dataclass(frozen=True)
class WorldBatch:
    """A batch: ``x`` ``[B, n_dims]`` and its true ``codes`` (``SparseCodes``, ``[B, k_max]``)."""

    x: Tensor
    codes: SparseCodes

    def dense_codes(self) -> Tensor:
        """``[B, n_features]`` dense true codes (only for this batch)."""
        return self.codes.to_dense()


def firing_probabilities(n: int, l0: float, zipf_exponent: float, max_prob: float) -> Tensor:
    """``[n]`` float64 ``p_j = min(c (j+1)^-a, max_prob)`` with ``c`` chosen so ``sum p = l0``.

    Water-filling: the ``m`` most frequent features sit at ``max_prob`` and the rest share
    ``l0 - m max_prob`` in proportion to their weights, with the smallest ``m`` that keeps every
    unclamped ``p_j <= max_prob``. Weights that underflow give ``p_j = 0``.
    """
    w = torch.arange(1, n + 1, dtype=torch.float64) ** -float(zipf_exponent)
    tail = torch.flip(torch.cumsum(torch.flip(w, [0]), 0), [0])  # sum_{j >= m} w_j
    m = torch.arange(n, dtype=torch.float64)
    c = (l0 - m * max_prob) / tail.clamp_min(1e-300)
    ok = (tail > 0) & (c > 0) & (c * w <= max_prob * (1 + 1e-12))
    if not ok.any():  # l0 == n * max_prob: everything at the cap
        return torch.full((n,), float(max_prob), dtype=torch.float64)
    first = int(ok.nonzero()[0])
    p = (c[first] * w).clamp(max=max_prob)
    p[:first] = max_prob
    return p


#: elements per dense temporary ``[sub_block, n_features]`` (16 MiB of float32)
_DENSE_ELEMENTS = 1 << 22


def _row_major(r: Tensor, c: Tensor, n_features: int) -> tuple[Tensor, Tensor]:
    """Entries ``(r, c)`` sorted by row then column, duplicates removed."""
    key = (r * n_features + c).unique()
    return key // n_features, key % n_features


def _gumbel(u: Tensor) -> Tensor:
    eps = torch.finfo(u.dtype).eps
    return -torch.log(-torch.log(u.clamp(eps, 1 - eps)))


class World:
    """A synthetic world built from a :class:`WorldConfig` (same config, same world).

    Attributes:
        config: the config.
        dictionary: ``[n_features, n_dims]`` float32 unit-norm atoms.
        bias: ``[n_dims]`` constant offset (zeros unless ``bias_norm > 0``).
        probabilities: ``[n_features]`` float64 base firing probabilities (before the hierarchy).
        mean, std: ``[n_features]`` float32 per-feature magnitude parameters.
        levels: the forest, deepest level first (empty without a hierarchy).
    """

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        c = config
        n, m, seed = c.n_features, int(c.n_dims or 0), c.seed
        g = generator(seed, "world:dictionary")
        self.dictionary = F.normalize(torch.randn(n, m, generator=g), dim=1)
        self.bias = torch.zeros(m)
        if c.bias_norm > 0:
            self.bias = c.bias_norm * F.normalize(torch.randn(m, generator=g), dim=0)
        f = c.firing
        self.probabilities = firing_probabilities(n, f.l0, f.zipf_exponent, f.max_prob)
        g = generator(seed, "world:magnitudes")
        mg = c.magnitude
        self.mean = (mg.mean + mg.mean_spread * torch.randn(n, generator=g)).abs()
        self.std = (mg.std + mg.std_spread * torch.randn(n, generator=g)).abs()
        self.factor: Tensor | None = None
        self.diag_sqrt: Tensor | None = None
        if c.correlation is not None:
            g = generator(seed, "world:correlation")
            fac = torch.randn(n, c.correlation.rank, generator=g) * c.correlation.scale
            sq = fac.pow(2).sum(1, keepdim=True)
            fac = fac * torch.where(sq > 0.99, (0.99 / sq.clamp_min(1e-30)).sqrt(), 1.0)
            self.factor = fac
            self.diag_sqrt = (1 - fac.pow(2).sum(1)).clamp_min(1e-2).sqrt()
        # fire iff u > 1 - p_j (uniform u), or z > Phi^-1(1 - p_j) (standard normal z)
        q = (1 - self.probabilities).clamp(0.0, 1.0)
        self._u_threshold = q.float()
        self._z_threshold = (math.sqrt(2) * torch.erfinv(2 * q - 1)).float()
        self._cache: tuple[tuple[int, str], Block] | None = None
        self.levels: list[TreeLevel] = []
        if c.hierarchy is not None:
            self.levels = self._build_forest(generator(seed, "world:hierarchy"))

    # ------------------------------------------------------------------ structure
    def _build_forest(self, g: torch.Generator) -> list[TreeLevel]:
        h = self.config.hierarchy
        assert h is not None
        nodes = torch.randperm(self.config.n_features, generator=g)[: h.n_nodes]
        parents = nodes[: h.n_roots]
        pos = h.n_roots
        levels = []
        for _ in range(h.depth):
            n_child = parents.numel() * h.branching
            children = nodes[pos : pos + n_child].reshape(parents.numel(), h.branching)
            pos += n_child
            levels.append(TreeLevel(parents, children))
            parents = children.reshape(-1)
        return levels[::-1]

    @property
    def n_features(self) -> int:
        return self.config.n_features

    @property
    def n_dims(self) -> int:
        return int(self.config.n_dims or 0)

    def parent_children(self) -> dict[int, list[int]]:
        """``{parent feature: [its child features]}`` over the whole forest."""
        out: dict[int, list[int]] = {}
        for lv in self.levels:
            for p, ch in zip(lv.parents.tolist(), lv.children.tolist(), strict=True):
                out[int(p)] = [int(c) for c in ch]
        return out

    # ------------------------------------------------------------------ sampling
    def _fire_sparse(self, rows: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """Independent Bernoulli firing in ``O(nnz + n_features)``: geometric gaps per feature.

        Feature ``j`` fires in rows ``cumsum(gaps) - 1`` with ``gaps ~ Geometric(p_j)``, which is
        exactly i.i.d. Bernoulli(``p_j``) over the rows. Returns row-major ``(rows, cols)``.
        """
        p = self.probabilities
        mean = rows * p
        budget = (mean + 5 * (mean * (1 - p)).sqrt() + 5).ceil().long()
        fid = torch.repeat_interleave(torch.arange(self.n_features), budget)
        seg_end = torch.cumsum(budget, 0)
        log_q = torch.log1p(-p.clamp(max=1 - 1e-12))
        u = torch.rand(fid.numel(), generator=g, dtype=torch.float64).clamp_min(1e-300)
        # a gap past the block end ends that feature's run; clamping keeps the float64 cumsum
        # exact (and finite when p_j = 0) without moving any in-block position
        gaps = (torch.floor(torch.log(u) / log_q[fid]) + 1).clamp_(max=rows + 1)
        cs = torch.cumsum(gaps, 0)
        base = torch.cat([cs.new_zeros(1), cs[seg_end[:-1] - 1]])
        pos = cs - base[fid] - 1
        reached = pos[seg_end - 1]
        hit = pos < rows
        rr, cc = [pos[hit].long()], [fid[hit]]
        short = (reached < rows).nonzero().squeeze(1)
        while short.numel():  # rare: a feature's budget ran out before the block's end
            u = torch.rand(short.numel(), generator=g, dtype=torch.float64).clamp_min(1e-300)
            reached[short] += (torch.floor(torch.log(u) / log_q[short]) + 1).clamp_(max=rows + 1)
            hit = reached[short] < rows
            short = short[hit]
            rr.append(reached[short].long())
            cc.append(short)
        return _row_major(torch.cat(rr), torch.cat(cc), self.n_features)

    def _fire_dense(self, rows: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """Correlated or exact-k firing, drawn densely in sub-blocks of bounded size."""
        n, f = self.n_features, self.config.firing
        step = max(1, _DENSE_ELEMENTS // n)
        rr, cc = [], []
        for lo in range(0, rows, step):
            m = min(step, rows - lo)
            if self.factor is not None:
                assert self.diag_sqrt is not None
                eps = torch.randn(m, self.factor.shape[1], generator=g)
                z = torch.randn(m, n, generator=g).mul_(self.diag_sqrt).addmm_(eps, self.factor.T)
                if f.mode == "bernoulli":
                    fire = z > self._z_threshold
                else:
                    v = 0.5 * (1 + torch.erf(z / math.sqrt(2)))  # uniform marginals, correlated
            else:
                v = torch.rand(m, n, generator=g)
            if f.mode == "exact_k":
                scores = _gumbel(v)
                if f.zipf_exponent > 0:
                    ranks = torch.arange(1, n + 1, dtype=torch.float32)
                    scores = scores - f.zipf_exponent * torch.log(ranks)
                idx = scores.topk(int(f.l0), dim=1).indices
                fire = torch.zeros(m, n, dtype=torch.bool).scatter_(1, idx, True)
            r, c = fire.nonzero(as_tuple=True)
            rr.append(r + lo)
            cc.append(c)
        return torch.cat(rr), torch.cat(cc)

    def _apply_hierarchy(self, r: Tensor, c: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """Mutual exclusion among siblings and parents on (bottom-up), then gating (top-down)."""
        h = self.config.hierarchy
        for lv in self.levels:
            n_par = lv.parents.numel()
            slot = torch.full((self.n_features,), -1, dtype=torch.long)
            slot[lv.children.reshape(-1)] = torch.arange(n_par).repeat_interleave(
                lv.children.shape[1]
            )
            s = slot[c]
            is_child = s >= 0
            group = r[is_child] * n_par + s[is_child]
            if h is not None and h.mutually_exclusive and group.numel():
                key = group.double() + torch.rand(group.numel(), generator=g, dtype=torch.float64)
                order = key.argsort()
                sg = group[order]
                first = torch.ones_like(sg, dtype=torch.bool)
                first[1:] = sg[1:] != sg[:-1]
                drop = torch.zeros(r.numel(), dtype=torch.bool)
                child_pos = is_child.nonzero().squeeze(1)
                drop[child_pos[order[~first]]] = True
                r, c = r[~drop], c[~drop]
                group = sg[first]
            group = group.unique()
            r = torch.cat([r, group // n_par])
            c = torch.cat([c, lv.parents[group % n_par]])
            r, c = _row_major(r, c, self.n_features)
        # mutual exclusion higher up may have dropped a parent whose children fired: drop
        # those children too (top-down), so a child never fires without its parent
        n = self.n_features
        for lv in reversed(self.levels):
            parent_of = torch.full((n,), -1, dtype=torch.long)
            parent_of[lv.children.reshape(-1)] = lv.parents.repeat_interleave(lv.children.shape[1])
            keys = r * n + c
            par = parent_of[c]
            is_child = par >= 0
            want = r[is_child] * n + par[is_child]
            at = torch.searchsorted(keys, want).clamp(max=keys.numel() - 1)
            keep = torch.ones_like(is_child)
            keep[is_child] = keys[at] == want
            r, c = r[keep], c[keep]
        return r, c

    def block(self, index: int, stream: str = "train") -> Block:
        """Block ``index`` of ``stream``: ``config.block_rows`` rows (see the module docstring)."""
        rows = self.config.block_rows
        g = generator(self.config.seed, f"world:samples:{stream}:{int(index)}")
        sparse = self.factor is None and self.config.firing.mode == "bernoulli"
        r, col = self._fire_sparse(rows, g) if sparse else self._fire_dense(rows, g)
        r, col = self._apply_hierarchy(r, col, g)
        eps = torch.randn(r.numel(), generator=g)
        vals = (self.mean[col] + self.std[col] * eps).abs()
        codes = torch.sparse_coo_tensor(
            torch.stack([r, col]), vals, (rows, self.n_features), check_invariants=False
        )
        x = torch.sparse.mm(codes, self.dictionary) + self.bias
        if self.config.noise > 0:
            x = x + self.config.noise * torch.randn(x.shape, generator=g)
        return Block(x, r, col, vals)

    def rows(self, start: int, n: int, stream: str = "train") -> WorldBatch:
        """Rows ``[start, start + n)`` of ``stream`` as one :class:`WorldBatch`."""
        br = self.config.block_rows
        xs, rr, cc, vv = [], [], [], []
        pos, end = int(start), int(start) + int(n)
        while pos < end:
            b, off = divmod(pos, br)
            blk = self._cached_block(b, stream)
            take = min(br - off, end - pos)
            lo = int(torch.searchsorted(blk.rows, off))
            hi = int(torch.searchsorted(blk.rows, off + take))
            xs.append(blk.x[off : off + take])
            rr.append(blk.rows[lo:hi] - off + (pos - start))
            cc.append(blk.cols[lo:hi])
            vv.append(blk.values[lo:hi])
            pos += take
        return WorldBatch(
            torch.cat(xs), _pack(torch.cat(rr), torch.cat(cc), torch.cat(vv), n, self.n_features)
        )

    def _cached_block(self, b: int, stream: str) -> Block:
        """The last block drawn is kept, so consecutive batches inside it cost nothing."""
        if self._cache is None or self._cache[0] != (b, stream):
            self._cache = ((b, stream), self.block(b, stream))
        return self._cache[1]

    def batches(
        self, batch_size: int, *, start: int = 0, stream: str = "train"
    ) -> Iterator[WorldBatch]:
        """Endless consecutive batches of ``stream`` from row ``start``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        pos = int(start)
        while True:
            yield self.rows(pos, batch_size, stream)
            pos += batch_size

    def sample(self, n: int, *, stream: str = "test", start: int = 0) -> SyntheticData:
        """``n`` rows with *dense* codes ``[n, n_features]``, for evaluation on small worlds."""
        batch = self.rows(start, n, stream)
        return SyntheticData(
            batch.x,
            batch.dense_codes(),
            self.dictionary,
            {"world": self.config.to_dict(), "stream": stream, "start": start},
        )


def _pack(rows: Tensor, cols: Tensor, vals: Tensor, n: int, n_features: int) -> SparseCodes:
    """Row-sorted active entries -> ``SparseCodes`` ``[n, k_max]`` (zero-padded)."""
    counts = torch.bincount(rows, minlength=n)
    k = max(int(counts.max()) if counts.numel() else 0, 1)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.numel()) - first[rows]
    idx = torch.zeros(n, k, dtype=torch.long)
    val = torch.zeros(n, k, dtype=vals.dtype)
    idx[rows, slot] = cols
    val[rows, slot] = vals
    return SparseCodes(idx, val, n_features)
