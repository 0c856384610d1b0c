"""Grounded-QA task evaluation: generate answers for held-out records and score them."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ssr.data.prompts import PromptConfig, generation_prompt
from ssr.eval.task_metrics import grounded_qa_scores
from ssr.generation import DecodingConfig, hf_generate
from ssr.records import Record


def evaluate_grounded(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: list[Record],
    prompt_cfg: PromptConfig,
    decoding: DecodingConfig | None = None,
    batch_size: int = 16,
    progress: bool = False,
    max_prompt_tokens: int | None = None,
    precision: str | Any = "auto",
) -> tuple[dict[str, Any], list[str]]:
    """Scores (unanswerable accuracy/P/R/F1, answer token recall/F1) and the predictions.

    ``max_prompt_tokens`` cuts long documents as training does (one 20k-token document would
    otherwise set the width of its whole generation batch). ``precision``: see :mod:`ssr.precision`."""
    prompts = [generation_prompt(tokenizer, r, prompt_cfg, max_prompt_tokens) for r in records]
    predictions = hf_generate(
        model,
        tokenizer,
        prompts,
        decoding or DecodingConfig(max_new_tokens=64),
        batch_size=batch_size,
        precision=precision,
        progress=progress,
    )
    rows = [(p, r.meta.get("answers") or r.gold, r.answerable) for p, r in zip(predictions, records)]
    return grounded_qa_scores(rows, prompt_cfg.unanswerable_sentence).to_dict(), predictions
