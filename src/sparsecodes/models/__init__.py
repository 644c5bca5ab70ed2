"""Language-model adapters with named hook points (``blocks.{i}.{kind}``) for every architecture.

>>> from sparsecodes.models import load_model
>>> lm = load_model("tiny-llama")
>>> ids, mask = lm.encode(["hello world"])
>>> acts = lm.run(ids, mask, hooks=["blocks.1.resid_post"])   # stops after block 1
>>> acts["blocks.1.resid_post"].shape
torch.Size([1, 12, 64])
"""

from sparsecodes.devices import resolve_device
from sparsecodes.models.adapter import Edit, ModelAdapter
from sparsecodes.models.embedded import (
    EMBEDDED_MODELS,
    EmbeddedModel,
    ModelNotFoundError,
    is_installed,
    tiny_llama,
)
from sparsecodes.models.hooks import HOOK_KINDS, HOOK_PATTERN, HookPoint, hook_name, parse_hook
from sparsecodes.models.loading import load_model
from sparsecodes.models.sentence import embed_sentences

__all__ = [
    "EMBEDDED_MODELS",
    "HOOK_KINDS",
    "HOOK_PATTERN",
    "Edit",
    "EmbeddedModel",
    "HookPoint",
    "ModelAdapter",
    "ModelNotFoundError",
    "embed_sentences",
    "hook_name",
    "is_installed",
    "load_model",
    "parse_hook",
    "resolve_device",
    "tiny_llama",
]
