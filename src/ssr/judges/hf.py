"""LLM judge on a local Hugging Face causal LM: P(Yes) vs P(No) at the next-token position."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ssr.judges.base import Judge, JudgeError, JudgeItem, Verdict
from ssr.judges.prompt import DEFAULT_SYSTEM_PROMPT, JudgePrompt
from ssr.models.loading import resolve_path
from ssr.runtime.hashing import content_hash
from ssr.runtime.precision import autocast_dtype, autocast_to, torch_dtype

log = logging.getLogger(__name__)


def _as_variants(tokens: str | Sequence[str]) -> tuple[str, ...]:
    variants = (tokens,) if isinstance(tokens, str) else tuple(str(t) for t in tokens)
    if not variants:
        raise ValueError("judge yes_token/no_token must name at least one token")
    return variants


def load_judge_model(model: str | os.PathLike[str], dtype: str) -> tuple[Any, Any]:
    """Load (model, tokenizer) from a hub id, a local directory or a ``.gguf`` file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model)
    kwargs: dict[str, Any] = {}
    source = resolve_path(str(model))  # also maps embedded:smollm2-135m-instruct to its cached dir
    if path.suffix == ".gguf":
        if not path.is_file():
            raise JudgeError(f"judge model file not found: {path}")
        source, kwargs["gguf_file"] = str(path.parent), path.name
    else:
        kwargs["use_safetensors"] = True
    tokenizer = AutoTokenizer.from_pretrained(source, **{k: v for k, v in kwargs.items() if k == "gguf_file"})
    lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype(dtype), **kwargs)
    return lm, tokenizer


class HFJudge(Judge):
    """Scores ``P(yes) / (P(yes) + P(no))`` from one forward pass per batch (left padding).

    ``yes_token``/``no_token`` may list several spellings (e.g. ``["Yes", " Yes"]``); each must be
    a single token, and the probabilities of the spellings are summed. Pass ``model_and_tokenizer``
    to use an already-loaded model (``model`` then only names it in the fingerprint).
    """

    name = "hf"

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        prompt_template: str | None = None,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        yes_token: str | Sequence[str] = ("Yes", " Yes"),
        no_token: str | Sequence[str] = ("No", " No"),
        threshold: float = 0.5,
        batch_size: int = 8,
        dtype: str = "float32",
        precision: str | None = "auto",
        max_document_chars: int | None = 6000,
        device: str = "cpu",
        model_and_tokenizer: tuple[Any, Any] | None = None,
    ) -> None:
        torch_dtype(dtype, "judge.dtype")  # unknown names fail here, before any model load
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"judge.threshold must be in [0, 1], got {threshold}")
        if batch_size < 1:
            raise ValueError(f"judge.batch_size must be >= 1, got {batch_size}")
        self.prompt = JudgePrompt.build(prompt_template, system_prompt, max_document_chars)
        self.yes_variants = _as_variants(yes_token)
        self.no_variants = _as_variants(no_token)
        self.threshold = float(threshold)
        self.batch_size = batch_size
        self.dtype = dtype
        self.device = torch.device(device)
        # the forward's autocast dtype (ssr.runtime.precision: auto = measured on this machine)
        self.autocast = autocast_dtype(precision, self.device.type)
        if model_and_tokenizer is not None:
            self.model, self.tokenizer = model_and_tokenizer
            cfg = getattr(self.model, "config", None)
            self.model_id = str(model) if model is not None else self._anonymous_model_id(cfg)
        elif model is None:
            raise ValueError("HFJudge needs `model` (hub id, directory or .gguf) or `model_and_tokenizer`")
        else:
            log.info("loading judge model %s (%s)", model, dtype)
            self.model, self.tokenizer = load_judge_model(model, dtype)
            self.model_id = str(model)
        self.model.to(self.device).eval()
        self.yes_ids = self._token_ids(self.yes_variants, "yes_token")
        self.no_ids = self._token_ids(self.no_variants, "no_token")
        if set(self.yes_ids) & set(self.no_ids):
            raise ValueError(
                f"judge yes_token {self.yes_variants} and no_token {self.no_variants} share a token"
            )
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @staticmethod
    def _anonymous_model_id(cfg: Any) -> str:
        name = getattr(cfg, "name_or_path", "") or ""
        return name or f"config:{content_hash(cfg.to_json_string() if cfg is not None else '')}"

    def _token_ids(self, variants: tuple[str, ...], what: str) -> tuple[int, ...]:
        ids, skipped = [], []
        for text in variants:
            encoded = self.tokenizer.encode(text, add_special_tokens=False)
            if len(encoded) == 1:
                ids.append(encoded[0])
            else:
                skipped.append(text)
        if not ids:
            raise ValueError(
                f"judge.{what} {list(variants)}: no spelling is a single token for this "
                "tokenizer; give at least one that is"
            )
        if skipped:
            log.warning("judge.%s: ignoring %s (not a single token for this tokenizer)", what, skipped)
        return tuple(dict.fromkeys(ids))

    def __repr__(self) -> str:
        return f"HFJudge(model={self.model_id!r}, threshold={self.threshold}, dtype={self.dtype!r})"

    def _fingerprint_parts(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            **self.prompt.fingerprint_parts(),
            "yes": self.yes_variants,
            "no": self.no_variants,
            "threshold": self.threshold,
            "dtype": self.dtype,
            "autocast": str(self.autocast),
        }

    def render(self, item: JudgeItem) -> str:
        """The exact text fed to the model for one item (chat template + generation prompt)."""
        messages = self.prompt.messages(item)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\nAnswer:"

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast_to(self.device.type, self.autocast)

    @torch.inference_mode()
    def yes_probabilities(self, items: list[JudgeItem]) -> list[float]:
        """``P(yes) / (P(yes) + P(no))`` for each item, one forward pass per ``batch_size`` items."""
        probs: list[float] = []
        for start in range(0, len(items), self.batch_size):
            texts = [self.render(item) for item in items[start : start + self.batch_size]]
            enc = self.tokenizer(
                texts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt"
            ).to(self.device)
            position_ids = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            with self._autocast():
                out = self.model(
                    input_ids=enc["input_ids"],
                    attention_mask=enc["attention_mask"],
                    position_ids=position_ids,
                    logits_to_keep=1,
                )
            logits = out.logits[:, -1, :].float()
            yes = torch.logsumexp(logits[:, list(self.yes_ids)], dim=-1)
            no = torch.logsumexp(logits[:, list(self.no_ids)], dim=-1)
            probs.extend(torch.sigmoid(yes - no).tolist())
        return probs

    def judge_batch(self, items: list[JudgeItem]) -> list[Verdict]:
        verdicts = []
        for p_yes in self.yes_probabilities(items):
            accept = p_yes >= self.threshold
            verdicts.append(
                Verdict(
                    accept=accept,
                    score=p_yes,
                    rationale=f"P(yes)={p_yes:.3f} {'>=' if accept else '<'} {self.threshold}",
                )
            )
        return verdicts
