"""Automated interpretability: explain latents from their top contexts; score the explanations by
detection, fuzzing, embedding similarity or simulation, and the latents by intruder detection.

>>> from sparsecodes.autointerp import OpenAIChatClient, collect_examples, run_autointerp
>>> examples = collect_examples(coder, adapter, "blocks.3.resid_post", texts, range(20))
>>> client = OpenAIChatClient("http://127.0.0.1:8000/v1", "my-model")   # any OpenAI-compatible
>>> report = run_autointerp(examples, client)            # or LocalChatBackend() offline
>>> report.save("explanations.json")

Other scorers: ``run_autointerp(examples, client, scorers=[DetectionScorer(client),
EmbeddingScorer(SentenceEmbedder())])``. See ``docs/autointerp.md`` for the prompts, the scorers,
their intervals and the output file.
"""

from sparsecodes.autointerp.classify import Classification, balanced_accuracy
from sparsecodes.autointerp.client import (
    ChatBackend,
    ChatCallError,
    EndpointUnreachableError,
    Message,
    OpenAIChatClient,
    call_with_retries,
    retry_call,
)
from sparsecodes.autointerp.detect import Detection, detect, detect_messages, parse_detection
from sparsecodes.autointerp.embedding import SentenceEmbedder, embedding_score
from sparsecodes.autointerp.examples import (
    Context,
    LatentExamples,
    collect_examples,
    examples_from_activations,
    window_activations,
    window_model_activations,
)
from sparsecodes.autointerp.explain import (
    explain_messages,
    parse_explanation,
    render_context,
    top_tokens_explanation,
)
from sparsecodes.autointerp.fuzz import fuzz
from sparsecodes.autointerp.intruder import intruder
from sparsecodes.autointerp.local import LocalChatBackend
from sparsecodes.autointerp.pipeline import (
    AutointerpConfig,
    AutointerpReport,
    LatentResult,
    interpret_latent,
    read_explanations,
    run_autointerp,
)
from sparsecodes.autointerp.scorers import (
    SCORER_NAMES,
    DetectionScorer,
    EmbeddingScorer,
    FuzzScorer,
    IntruderScorer,
    LatentScorer,
    ScoreRecord,
    SimulationScorer,
)
from sparsecodes.autointerp.simulation import (
    CompletionsSimulator,
    LocalSimulator,
    Simulator,
    simulation_score,
)

__all__ = [
    "SCORER_NAMES",
    "AutointerpConfig",
    "AutointerpReport",
    "ChatBackend",
    "ChatCallError",
    "Classification",
    "CompletionsSimulator",
    "Context",
    "Detection",
    "DetectionScorer",
    "EmbeddingScorer",
    "EndpointUnreachableError",
    "FuzzScorer",
    "IntruderScorer",
    "LatentExamples",
    "LatentResult",
    "LatentScorer",
    "LocalChatBackend",
    "LocalSimulator",
    "Message",
    "OpenAIChatClient",
    "ScoreRecord",
    "SentenceEmbedder",
    "SimulationScorer",
    "Simulator",
    "balanced_accuracy",
    "call_with_retries",
    "collect_examples",
    "detect",
    "detect_messages",
    "embedding_score",
    "examples_from_activations",
    "explain_messages",
    "fuzz",
    "interpret_latent",
    "intruder",
    "parse_detection",
    "parse_explanation",
    "read_explanations",
    "render_context",
    "retry_call",
    "run_autointerp",
    "simulation_score",
    "top_tokens_explanation",
    "window_activations",
    "window_model_activations",
]
