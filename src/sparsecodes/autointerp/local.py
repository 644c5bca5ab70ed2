"""The offline chat backend: an embedded instruct model run locally with transformers ``generate``.

Default: SmolLM2-135M-Instruct (the ``smollm2-135m`` embedded model), prompted through its own
chat template and decoded greedily, so the same messages always give the same answer. A 135M
model is a weak explainer and a weak judge: treat its scores as a floor that shows the pipeline
runs offline, not as a measure of how interpretable a dictionary is; use ``--endpoint`` with a
capable model for that.
"""

from __future__ import annotations

from typing import Any

import torch

from sparsecodes.autointerp.client import ChatCallError, Message, check_messages


def local_model(model_name: str, model: Any, tokenizer: Any, device: str) -> tuple[Any, Any]:
    """``(model, tokenizer)``: the given pair, or ``model_name`` loaded (an embedded name or a
    local directory) when both are None; ``ValueError`` when only one is given."""
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither (to load model_name)")
    if model is None:
        from sparsecodes.models import load_model

        adapter = load_model(model_name, device=device)
        model, tokenizer = adapter.model, adapter.tokenizer
    return model, tokenizer


class LocalChatBackend:
    """Greedy chat completions from a local causal LM with a chat template.

    Args:
        model_name: an embedded model name (``sparsecodes models``) or a local directory;
            ignored when ``model`` and ``tokenizer`` are given (e.g. an adapter's, to share them).
        max_new_tokens: cap on the reply length.
        max_prompt_tokens: longer prompts are a failed call (the model's context is finite).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
    """

    def __init__(
        self,
        model_name: str = "smollm2-135m",
        *,
        model: Any = None,
        tokenizer: Any = None,
        max_new_tokens: int = 64,
        max_prompt_tokens: int = 4096,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        model, tokenizer = local_model(model_name, model, tokenizer, device)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"the tokenizer of {model_name!r} has no chat template; use an instruct model "
                "(the embedded default smollm2-135m has one) or an --endpoint"
            )
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.model_name = model_name
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.seed = seed

    @classmethod
    def from_adapter(cls, adapter: Any, **kwargs: Any) -> LocalChatBackend:
        """Share an already loaded :class:`~sparsecodes.models.ModelAdapter`'s model."""
        return cls(adapter.name, model=adapter.model, tokenizer=adapter.tokenizer, **kwargs)

    def describe(self) -> str:
        return f"local {self.model_name} (transformers generate, greedy)"

    @torch.no_grad()
    def complete(self, messages: list[Message]) -> str:
        check_messages(messages)
        tok = self.tokenizer
        enc = tok.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        ids = enc["input_ids"]
        if ids.shape[1] > self.max_prompt_tokens:
            raise ChatCallError(
                f"prompt of {ids.shape[1]} tokens exceeds max_prompt_tokens="
                f"{self.max_prompt_tokens}; show fewer or shorter contexts"
            )
        device = next(self.model.parameters()).device
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            out = self.model.generate(
                input_ids=ids.to(device),
                attention_mask=enc["attention_mask"].to(device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
