"""Device resolution: ``"auto"`` takes CUDA when present, else the CPU. Nothing hard-codes one."""

from __future__ import annotations

import torch

__all__ = ["device_name", "native_bf16", "resolve_device", "synchronize"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; None -> CPU; else parsed by ``torch.device``.

    Raises ``ValueError`` naming the accepted values for a string torch does not understand.
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device {device!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from e


def synchronize(device: str | torch.device) -> None:
    """Wait for the queued kernels of ``device`` (CUDA); a no-op on the CPU. Timings of GPU work
    must call it before reading the clock."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: str | torch.device) -> str:
    """What a benchmark records: the GPU's name (``torch.cuda.get_device_name``) for CUDA, else
    ``"cpu (<capability>)"`` with torch's CPU capability (``AVX2``, ``AVX512``, ...)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu ({torch.backends.cpu.get_cpu_capability()})"
    return device.type


def native_bf16(device: str | torch.device) -> bool:
    """True where bfloat16 arithmetic runs in hardware: CUDA with bf16 support, or a CPU with
    ``avx512_bf16`` or AMX (``amx_bf16``) in ``/proc/cpuinfo``. Without them torch emulates bf16
    on the CPU, which is slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def cpu_info(field: str) -> str:
    """A field of ``/proc/cpuinfo`` for the first CPU (``"vendor_id"``, ``"model name"``, ...),
    or ``""`` where there is none (not Linux, or no such field)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return ""
