"""Device resolution: ``"auto"`` takes CUDA when present, else the CPU. Nothing hard-codes one."""

from __future__ import annotations

import torch

__all__ = ["device_name", "resolve_device", "synchronize"]


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
