"""The CUDA paths on a real GPU: the same results as the CPU paths (skipped without CUDA).

On a machine with a GPU: ``python -m pytest -q tests/test_cuda.py`` (``benchmarks/gpu_check.sh``
runs it together with the GPU benchmarks). ``SPARSECODES_TEST_DEVICE=cpu`` runs the same test
code with the CPU standing in for the GPU, which checks the tests themselves, not CUDA.

Tolerances: fp32 on both sides, different kernels and summation orders (cuBLAS, Triton's atomic
adds, cuDNN-free attention): about 1e-6 relative per operation. Four Adam steps at lr 1e-3 move a
weight by at most 4e-3, and a gradient whose two roundings differ only in the last bits changes
that by far less, so weights agree to 1e-4.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from sparsecodes import SparseCoder
from sparsecodes.codes import to_dense
from sparsecodes.dictionary import Dictionary
from sparsecodes.encoders import make_encoder
from sparsecodes.models import load_model
from sparsecodes.training import TrainConfig, Trainer

DEVICE = os.environ.get("SPARSECODES_TEST_DEVICE", "cuda")
CUDA = DEVICE == "cuda"

pytestmark = pytest.mark.skipif(
    CUDA and not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh)"
)


def _batches(steps: int, d: int = 32, batch: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(steps * batch, d, generator=g) @ torch.randn(d, d, generator=g)


def _train(device: str, encoder: str, kw: dict, *, steps: int = 4, autocast: str = "off"):
    x = _batches(steps).to(device)
    coder = SparseCoder(32, 128, encoder, seed=0, **kw).to(device)
    cfg = TrainConfig(steps=steps, batch_size=64, lr=1e-3, autocast=autocast)
    t = Trainer(coder, cfg)
    rows = [t.step(x[64 * i : 64 * (i + 1)]) for i in range(steps)]
    return coder, t, rows


@pytest.mark.parametrize(
    "encoder,kw",
    [("topk", {"k": 8}), ("batchtopk", {"k": 8}), ("relu", {"l1": 1e-3}), ("jumprelu", {})],
)
def test_fp32_training_steps_on_the_device_equal_the_cpu_steps(encoder, kw):
    dev, _, dev_rows = _train(DEVICE, encoder, kw)
    cpu, _, cpu_rows = _train("cpu", encoder, kw)
    want = cpu.state_dict()
    start = SparseCoder(32, 128, encoder, seed=0, **kw).state_dict()["dictionary.W_dec"]
    moved = (want["dictionary.W_dec"] - start).abs()
    assert moved.max() > 1e-3  # the steps changed the weights
    for name, value in dev.state_dict().items():
        assert value.device.type == torch.device(DEVICE).type, name
        torch.testing.assert_close(value.cpu(), want[name], rtol=1e-4, atol=1e-4, msg=name)
    for a, b in zip(dev_rows, cpu_rows, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["l0"] == pytest.approx(b["l0"], rel=1e-4)


def test_bf16_autocast_steps_keep_fp32_weights_and_never_wait_for_the_device():
    x = _batches(6).to(DEVICE)
    coder = SparseCoder(32, 128, "topk", seed=0, k=8).to(DEVICE)
    t = Trainer(coder, TrainConfig(steps=6, batch_size=64, lr=1e-3, dead_after_tokens=10**6))
    assert t.autocast_dtype == (torch.bfloat16 if CUDA else None)  # "auto": bf16 on CUDA only
    t.step(x[:64])  # the first step fits the normaliser and bounds the dead-latent check
    if CUDA:
        torch.cuda.set_sync_debug_mode("error")  # any device-to-host wait raises
    try:
        for i in range(1, 5):
            row = t.step(x[64 * i : 64 * (i + 1)], host_scalars=False)
    finally:
        if CUDA:
            torch.cuda.set_sync_debug_mode("default")
    assert row == {"step": 5.0, "tokens": 320.0}
    for p in [*coder.parameters(), *(s for st in t.optimizer.state.values() for s in st.values())]:
        if p.dim():
            assert p.dtype == torch.float32
    logged = t.step(x[320:])  # a logged step reads its scalars back
    assert logged["step"] == 6.0 and logged["loss"] == logged["loss"]  # finite, not NaN


@pytest.mark.skipif(
    not CUDA or importlib.util.find_spec("triton") is None, reason="needs CUDA and Triton"
)
def test_triton_sparse_decode_on_the_gpu_equals_the_cpu_kernel():
    from sparsecodes.kernels.sparse_decode import SparseDecode, decode_backend
    from sparsecodes.kernels.triton_decode import TritonSparseDecode

    assert decode_backend("cuda") == "triton"
    g = torch.Generator().manual_seed(0)
    B, k, N, d = 300, 16, 512, 200  # d is not a multiple of the column block: masked lanes
    idx = torch.randint(0, N, (B, k), generator=g)
    idx[0, 1] = idx[0, 0]  # a latent twice in one row: both atomic adds must land
    base = (torch.randn(B, k, generator=g), torch.randn(N, d, generator=g), torch.randn(d))
    gy = torch.randn(B, d, generator=g)
    cpu = [t.clone().requires_grad_() for t in base]
    gpu = [t.cuda().requires_grad_() for t in base]
    ref = SparseDecode.apply(idx, *cpu)
    out = TritonSparseDecode.apply(idx.cuda(), *gpu)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad(out, gpu, gy.cuda())
    want = torch.autograd.grad(ref, cpu, gy)
    for name, a, b in zip(("values", "W_dec", "b_dec"), got, want, strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-4, msg=name)


@pytest.mark.parametrize(
    "name,kw",
    [
        ("fista", {"iters": 200, "l1": 0.05}),
        ("omp", {"k": 4}),  # k = the true support: no picks among noise-level near-ties
        ("omp", {"k": 4, "nonneg": True}),
        ("mp", {"k": 4}),
    ],
)
def test_iterative_inference_on_the_device_equals_the_cpu(name, kw):
    g = torch.Generator().manual_seed(3)
    atoms = torch.nn.functional.normalize(torch.randn(96, 24, generator=g), dim=1)
    idx = torch.rand(256, 96, generator=g).argsort(dim=1)[:, :4]
    codes = torch.zeros(256, 96).scatter_(1, idx, 0.5 + torch.rand(256, 4, generator=g))
    x = codes @ atoms + 0.01 * torch.randn(256, 24, generator=g)
    D = Dictionary.from_atoms(atoms)
    want = to_dense(make_encoder(name, 24, 96, **kw).encode(x, D))
    enc = make_encoder(name, 24, 96, **kw).to(DEVICE)
    got = to_dense(enc.encode(x.to(DEVICE), D.to(DEVICE))).cpu()
    if name != "fista":  # greedy picks: the same atoms
        assert torch.equal(got != 0, want != 0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_tiny_llama_hooks_on_the_device_equal_the_cpu():
    hooks = ["blocks.0.resid_post", "blocks.1.attn.heads", "blocks.2.mlp_out"]
    cpu = load_model("tiny-llama", device="cpu")
    dev = load_model("tiny-llama", device=DEVICE)
    ids = torch.randint(0, len(cpu.tokenizer), (3, 40), generator=torch.Generator().manual_seed(1))
    want = cpu.run(ids, hooks=hooks)
    got = dev.run(ids.to(DEVICE), hooks=hooks)
    for h in hooks:
        scale = float(want[h].abs().max())
        torch.testing.assert_close(got[h].cpu(), want[h], rtol=1e-4, atol=1e-5 * scale, msg=h)
