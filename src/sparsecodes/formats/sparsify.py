"""EleutherAI sparsify's on-disk layout (``eai-sparsify``): ``cfg.json`` + ``sae.safetensors``.

sparsify's ``SparseCoder.save_to_disk(path)`` writes its config fields (``activation``,
``expansion_factor``, ``normalize_decoder``, ``num_latents``, ``k``, ``multi_topk``,
``skip_connection``, ``transcode``) plus ``d_in``, and the tensors ``encoder.weight``
``[num_latents, d_in]``, ``encoder.bias`` ``[num_latents]``, ``W_dec`` ``[num_latents, d_in]``,
``b_dec`` ``[d_in]`` (and ``W_skip`` ``[d_in, d_in]`` with a skip connection).

Its inference is ``relu((x - b_dec) @ encoder.weight.T + encoder.bias)``, keep the top ``k``, then
``x_hat = codes @ W_dec + b_dec``: our ``topk`` encoder with ``W_enc = encoder.weight.T``.
We refuse what that cannot represent: transcoders (``transcode=True``: no ``b_dec`` subtraction
and a different output space), skip connections, the ``groupmax`` activation, and files saved
without a decoder. ``multi_topk`` only changes sparsify's training loss and is ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

from sparsecodes.formats._common import (
    build_coder,
    check_tensors,
    exact_float32_config,
    read_json,
    read_safetensors,
    require_files,
    require_int,
)
from sparsecodes.sparse_coder import SparseCoder

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae.safetensors"


def load_sparsify(path: str | os.PathLike[str], *, device: str | None = None) -> SparseCoder:
    """Load one sparsify sparse coder (a hookpoint's directory) as a ``topk`` :class:`SparseCoder`.

    The result gives sparsify's top-k codes and reconstructions on the same inputs (computed in
    float32; bf16 files are upcast, which is exact). Raises ``ValueError`` naming the file for
    corrupt files, tensors that do not match ``cfg.json``, and options we cannot represent.
    """
    path = Path(path)
    cfg_path, w_path = require_files(path, (CFG_NAME, WEIGHTS_NAME), "sparsify")
    cfg = read_json(cfg_path)
    d_in = require_int(cfg, "d_in", cfg_path)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise ValueError(
            f"{cfg_path}: activation={activation!r} is not supported; sparsecodes can load "
            "sparsify's 'topk' activation only"
        )
    for flag, why in (
        ("transcode", "a transcoder predicts another module's output and skips the b_dec centring"),
        ("skip_connection", "a skip connection adds x @ W_skip.T to the output"),
    ):
        if cfg.get(flag, False):
            raise ValueError(
                f"{cfg_path}: {flag}=true is not supported ({why}); sparsecodes models are "
                "plain sparse autoencoders"
            )
    n_latents = cfg.get("num_latents") or 0
    if not n_latents:
        n_latents = d_in * require_int(cfg, "expansion_factor", cfg_path)
    if isinstance(n_latents, bool) or not isinstance(n_latents, int) or n_latents < 1:
        raise ValueError(f"{cfg_path}: num_latents must be a positive integer, got {n_latents!r}")
    k = require_int(cfg, "k", cfg_path)
    if k > n_latents:
        raise ValueError(f"{cfg_path}: k={k} exceeds the number of latents {n_latents}")

    tensors = read_safetensors(w_path)
    if "W_skip" in tensors:
        raise ValueError(f"{w_path}: holds W_skip (a skip connection), which is not supported")
    if "W_dec" not in tensors:
        raise ValueError(
            f"{w_path}: has no decoder (W_dec); it was saved without one, so it cannot be "
            "loaded as a sparse autoencoder"
        )
    expected = {
        "encoder.weight": (n_latents, d_in),
        "encoder.bias": (n_latents,),
        "W_dec": (n_latents, d_in),
        "b_dec": (d_in,),
    }
    check_tensors(tensors, expected, w_path, cfg_path)
    params = {
        "encoder.W_enc": tensors["encoder.weight"].T,
        "encoder.b_enc": tensors["encoder.bias"],
        "dictionary.W_dec": tensors["W_dec"],
        "dictionary.b_dec": tensors["b_dec"],
    }
    return build_coder(
        d_in=d_in,
        n_latents=n_latents,
        encoder="topk",
        encoder_config={"k": k, **exact_float32_config("topk")},
        params=params,
        device=device,
        source=path,
    )
