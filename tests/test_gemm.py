"""The CPU GEMM backend switch: results, backend resolution and what stays in torch."""

from __future__ import annotations

import pytest
import torch

from sparsecodes.kernels import gemm


def _pair(m: int, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)


def test_openblas_matmul_equals_torch_to_float32_rounding(openblas):
    a, b = _pair(256, 128, 192)
    ref = a.double() @ b.double()
    # each entry sums k products of N(0,1)s: float32 error ~ k * eps * |a_i||b_j| at most
    bound = 128 * 1.2e-7 * (a.norm(dim=1)[:, None] * b.norm(dim=0)[None]).max()
    assert gemm.uses_openblas(a, b)
    out = gemm.matmul(a, b)
    assert (out.double() - ref).abs().max() <= bound
    buf = torch.empty(256, 192)
    assert gemm.matmul(a, b, out=buf).data_ptr() == buf.data_ptr()
    assert torch.equal(buf, out)
    bt = b.t().contiguous().t()  # a transposed view, read without a copy
    assert (gemm.matmul(a, bt).double() - ref).abs().max() <= bound


def test_small_or_grad_products_stay_in_torch(openblas):
    a, b = _pair(8, 8, 8)
    assert not gemm.uses_openblas(a, b)
    a, b = _pair(256, 128, 192)
    b.requires_grad_(True)
    assert not gemm.uses_openblas(a, b)
    out = gemm.matmul(a, b)
    out.sum().backward()  # the torch path keeps autograd
    # d(sum a@b)/db[k, n] = sum_m a[m, k]: a sum of 256 floats, exact to ~256 * eps * max|a|
    assert torch.allclose(b.grad, a.sum(0)[:, None].expand(128, 192), rtol=0, atol=1e-4)
    with torch.no_grad():
        assert gemm.uses_openblas(a, b)
    assert not gemm.uses_openblas(a.double(), b.double().detach())


def test_openblas_rows_split_over_torch_threads_single_threaded_blas(openblas, monkeypatch):
    import threading

    import numpy as np

    ctl = gemm._numpy_openblas()
    seen = []  # (thread id, rows, OpenBLAS threads during the call)

    def spy(a, b, out):
        seen.append((threading.get_ident(), a.shape[0], ctl.info()[0]["num_threads"]))
        return real(a, b, out=out)

    real = np.matmul
    a, b = _pair(300, 128, 192)
    ref = a.double() @ b.double()
    bound = 128 * 1.2e-7 * (a.norm(dim=1)[:, None] * b.norm(dim=0)[None]).max()  # as above
    before_blas = ctl.info()[0]["num_threads"]
    before = torch.get_num_threads()
    monkeypatch.setattr(gemm.np, "matmul", spy)
    try:
        for threads, blocks in ((1, [300]), (2, [150, 150]), (3, [100, 100, 100])):
            seen.clear()
            torch.set_num_threads(threads)
            out = gemm.matmul(a, b)
            assert sorted(r for _, r, _ in seen) == blocks
            assert len({t for t, _, _ in seen}) == threads  # one block per thread
            assert {n for _, _, n in seen} == {1}  # OpenBLAS itself single-threaded
            assert threading.get_ident() in {t for t, _, _ in seen}  # the caller takes one
            assert (out.double() - ref).abs().max() <= bound
    finally:
        torch.set_num_threads(before)
    assert ctl.info()[0]["num_threads"] == before_blas  # restored for other numpy code
    assert gemm.row_blocks(100, 4) == [(0, 100)]  # < 2 * MIN_ROWS_PER_THREAD rows: one block


def test_backend_resolution(monkeypatch):
    monkeypatch.setenv("SPARSECODES_GEMM", "torch")
    assert gemm.resolve_gemm_backend() == "torch"
    with pytest.raises(ValueError, match="SPARSECODES_GEMM"):
        gemm.resolve_gemm_backend("mkl")
    monkeypatch.delenv("SPARSECODES_GEMM")
    have = gemm._numpy_openblas() is not None
    monkeypatch.setattr(gemm, "cpu_vendor", lambda: "GenuineIntel")
    assert gemm.resolve_gemm_backend("auto") == "torch"
    monkeypatch.setattr(gemm, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(gemm.platform, "machine", lambda: "x86_64")
    assert gemm.resolve_gemm_backend("auto") == ("openblas" if have else "torch")


@pytest.mark.slow  # three fresh interpreters importing torch
def test_command_line_processes_default_openmp_threads_to_sleep_when_idle():
    """`sparsecodes ...` / `python -m sparsecodes ...` set OMP_WAIT_POLICY=PASSIVE before torch
    loads (unless already set); importing the library leaves the environment alone."""
    import os
    import subprocess
    import sys

    probe = (
        "import sys; sys.argv[0] = {argv0!r}; import sparsecodes, os; "
        "print(os.environ.get('OMP_WAIT_POLICY'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}

    def policy(argv0: str, **extra: str) -> str:
        code = probe.format(argv0=argv0)
        run = subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    assert policy("-m") == "PASSIVE"  # what `python -m sparsecodes` sees while importing it
    assert policy("/usr/bin/sparsecodes", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"
    assert policy("-c") == "None"  # a library user's process


def test_row_blocks_work_after_fork_and_when_nested():
    """A forked child has none of the parent's worker threads: its first call starts its own
    (instead of waiting forever on the parent's); a block that itself splits runs inline."""
    import multiprocessing as mp
    import threading

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert gemm.run_row_blocks(256, lambda i, j: j - i) == [128, 128]  # parent's workers
        ctx = mp.get_context("fork")
        child = ctx.Process(target=_child_splits_rows)
        child.start()
        child.join(60)
        alive = child.is_alive()
        if alive:
            child.kill()
        assert not alive and child.exitcode == 0

        def outer(i: int, j: int) -> list[tuple[int, int]]:
            inner = gemm.run_row_blocks(j - i, lambda a, b: (a, b))
            return [(threading.get_ident(), len(inner))]

        parts = gemm.run_row_blocks(256, outer)
        main = threading.get_ident()
        assert [n for t, n in (p[0] for p in parts) if t != main] == [1]  # worker: inline
    finally:
        torch.set_num_threads(before)


def _child_splits_rows() -> None:
    torch.set_num_threads(2)
    out = gemm.run_row_blocks(256, lambda i, j: j - i)
    raise SystemExit(0 if out == [128, 128] else 1)


def test_cpu_info_reads_proc_cpuinfo_fields(tmp_path, monkeypatch):
    import builtins

    from sparsecodes.devices import cpu_info

    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\n")
    real_open = builtins.open
    monkeypatch.setattr(
        builtins, "open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p, *a, **k)
    )
    assert cpu_info("model name") == "AMD EPYC 7B13"
    assert cpu_info("vendor_id") == "AuthenticAMD"
    assert cpu_info("no such field") == ""
    assert gemm.cpu_vendor() == "AuthenticAMD"


def test_one_openblas_thread_holds_until_the_last_concurrent_caller_leaves(monkeypatch):
    """Two threads inside at once: the first to leave must not give the other OpenBLAS's full
    thread count back, and the last to leave restores the process's setting."""
    import threading

    class Blas:  # stands in for threadpoolctl's controller (the real one is capped by the env)
        threads = 4

        def limit(self, limits: int):
            saved, self.threads = self.threads, limits
            blas = self

            class Limiter:
                def restore_original_limits(self) -> None:
                    blas.threads = saved

            return Limiter()

    blas = Blas()
    monkeypatch.setattr(gemm, "_numpy_openblas", lambda: blas)
    first_in, first_out = threading.Event(), threading.Event()
    during: list[int] = []

    def second() -> None:
        with gemm.one_openblas_thread():
            first_in.set()
            first_out.wait(30)
            during.append(blas.threads)

    with gemm.one_openblas_thread():
        t = threading.Thread(target=second)
        t.start()
        first_in.wait(30)
    first_out.set()  # this thread has left; the other is still inside
    t.join(30)
    assert during == [1]
    assert blas.threads == 4
