"""Automated interpretability: explain latents from their top contexts, score by detection.

>>> from sparsecodes.autointerp import OpenAIChatClient, collect_examples, run_autointerp
>>> examples = collect_examples(coder, adapter, "blocks.3.resid_post", texts, range(20))
>>> client = OpenAIChatClient("http://127.0.0.1:8000/v1", "my-model")   # any OpenAI-compatible
>>> report = run_autointerp(examples, client)            # or LocalChatBackend() offline
>>> report.save("explanations.json")

See ``docs/autointerp.md`` for the prompts, the scoring and the output file.
"""

from sparsecodes.autointerp.client import (
    ChatBackend,
    ChatCallError,
    EndpointUnreachableError,
    Message,
    OpenAIChatClient,
    call_with_retries,
)
from sparsecodes.autointerp.detect import (
    Detection,
    balanced_accuracy,
    detect,
    detect_messages,
    parse_detection,
)
from sparsecodes.autointerp.examples import (
    Context,
    LatentExamples,
    collect_examples,
    examples_from_activations,
    window_activations,
)
from sparsecodes.autointerp.explain import explain_messages, parse_explanation, render_context
from sparsecodes.autointerp.local import LocalChatBackend
from sparsecodes.autointerp.pipeline import (
    AutointerpConfig,
    AutointerpReport,
    LatentResult,
    interpret_latent,
    run_autointerp,
)

__all__ = [
    "AutointerpConfig",
    "AutointerpReport",
    "ChatBackend",
    "ChatCallError",
    "Context",
    "Detection",
    "EndpointUnreachableError",
    "LatentExamples",
    "LatentResult",
    "LocalChatBackend",
    "Message",
    "OpenAIChatClient",
    "balanced_accuracy",
    "call_with_retries",
    "collect_examples",
    "detect",
    "detect_messages",
    "examples_from_activations",
    "explain_messages",
    "interpret_latent",
    "parse_detection",
    "parse_explanation",
    "render_context",
    "run_autointerp",
    "window_activations",
]
