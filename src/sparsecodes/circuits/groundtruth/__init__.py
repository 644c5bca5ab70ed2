"""Models whose circuits are known exactly, for checking circuit discovery (issue 5, item 7).

- :mod:`.handbuilt`: hand-set attention-only transformers with a planted induction circuit.
- :mod:`.induction`: a tiny attention-only model trained on CPU for induction; its circuit by
  exhaustive (single and pair) mean-ablation.
- :mod:`.tracr_models`: RASP programs compiled by tracr (optional extra), converted to torch.

Every task is a :class:`GroundTruthTask` (model, labelled prompts, circuit); per-head activations
in the scorer's dict form come from :func:`task_activations`. See ``docs/groundtruth.md``.
"""

from sparsecodes.circuits.groundtruth.handbuilt import (
    build_induction_model,
    handbuilt_task,
    induction_prompts,
)
from sparsecodes.circuits.groundtruth.induction import (
    InductionConfig,
    induction_task,
    train_induction_model,
)
from sparsecodes.circuits.groundtruth.model import HeadTransformer, mean_ablation, zero_ablation
from sparsecodes.circuits.groundtruth.task import (
    AblationResult,
    GroundTruthTask,
    accuracy,
    exhaustive_ablation,
    head_activations,
    label_separation,
    task_activations,
)

__all__ = [
    "AblationResult",
    "GroundTruthTask",
    "HeadTransformer",
    "InductionConfig",
    "accuracy",
    "build_induction_model",
    "exhaustive_ablation",
    "handbuilt_task",
    "head_activations",
    "induction_prompts",
    "induction_task",
    "label_separation",
    "mean_ablation",
    "task_activations",
    "train_induction_model",
    "zero_ablation",
]
