"""Grounded-QA task evaluation: generate answers for held-out records and score them."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ssr.data.prompts import PromptConfig, generation_prompt
from ssr.data.records import Record
from ssr.eval.items import TASKS_PREFIX, ItemSink
from ssr.eval.task_metrics import aggregate_row_scores, row_scores
from ssr.generation.config import DecodingConfig
from ssr.generation.hf import hf_generate, prompt_token_ids
from ssr.runtime.distributed import active_shard


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
    items: ItemSink | None = None,
    items_source: str = "in_domain",
) -> tuple[dict[str, Any], list[str]]:
    """Scores (unanswerable accuracy/P/R/F1, answer token recall/F1) and the predictions.

    ``max_prompt_tokens`` cuts long documents as training does (one 20k-token document would
    otherwise set the width of its whole generation batch). ``precision``: see :mod:`ssr.runtime.precision`.
    ``items`` gets each row's prediction and scores as source ``tasks.<items_source>``. In a
    sharded evaluation each rank generates its share of the batches."""
    prompts = [generation_prompt(tokenizer, r, prompt_cfg, max_prompt_tokens) for r in records]
    lengths = dict(zip(prompts, map(len, prompt_token_ids(tokenizer, prompts)), strict=True))
    predictions = active_shard().map(
        prompts,
        lambda part: hf_generate(
            model,
            tokenizer,
            part,
            decoding or DecodingConfig(max_new_tokens=64),
            batch_size=batch_size,
            precision=precision,
            progress=progress,
        ),
        source=f"{TASKS_PREFIX}{items_source}",
        batch_size=batch_size,
        length=lengths.__getitem__,
    )
    scored = grounded_row_items(records, predictions, prompt_cfg.unanswerable_sentence)
    if items is not None:
        items.write(f"{TASKS_PREFIX}{items_source}", scored)
    return aggregate_row_scores(scored).to_dict(), predictions


def grounded_row_items(
    records: list[Record], predictions: list[str], unanswerable_sentence: str
) -> list[dict[str, Any]]:
    """Per-row items (id, prediction, :func:`~ssr.eval.task_metrics.row_scores`)."""
    return [
        {
            "id": r.id,
            "prediction": p,
            **row_scores(p, r.meta.get("answers") or r.gold, r.answerable, unanswerable_sentence),
        }
        for p, r in zip(predictions, records, strict=True)
    ]
