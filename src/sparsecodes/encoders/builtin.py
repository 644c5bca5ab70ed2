"""Imports every built-in encoder module so each registers itself."""

import importlib

_MODULES = ["relu", "topk", "jumprelu", "gated", "mlp", "lista", "ista", "pursuit"]

for _m in _MODULES:
    try:
        importlib.import_module(f"sparsecodes.encoders.{_m}")
    except ModuleNotFoundError as e:  # module not written yet during development
        if e.name != f"sparsecodes.encoders.{_m}":
            raise
