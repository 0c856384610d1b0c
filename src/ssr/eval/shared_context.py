"""lm-eval's HFLM with each context forwarded once for all of its continuations.

A multiple-choice document becomes one loglikelihood request per choice, all with the same context
(ARC: 4-5, HellaSwag: 4, TruthfulQA MC2: ~7 choices after a 6-shot primer of ~200 tokens). HFLM
forwards ``context + continuation`` for every request, so the context is computed once per choice,
and it computes full-vocabulary logits at every position. Here the requests that share a context are
packed into one row: the context once, then each continuation's tokens (minus its last one) with
positions restarting at the context length and a 4D mask so that each continuation attends to the
context and to itself only (a tree); identical requests are computed once. Logits are computed only
where a continuation token is predicted. Rows whose contexts start with the same long prefix (a
task's few-shot primer: TruthfulQA's 6 questions, ~170 tokens, open every one of its documents)
forward that prefix once: its keys and values are computed for one sequence and reused by every
batch of those rows (:func:`prefix_clusters`).
The results are HFLM's (same log-probabilities up to float noise, same greedy flags; tested against
HFLM itself); groups that would be truncated to the model's length go through HFLM's own path.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

from ssr.models.logits import pad_token_id
from ssr.runtime.precision import autocast_to

Request = tuple[tuple[str, str], list[int], list[int]]


@dataclass
class PackedRow:
    """One context and its continuations as one sequence; ``targets[i]`` = (position, token) pairs."""

    tokens: list[int]
    positions: list[int]
    segments: list[int]  # 0 = context, j+1 = continuation j
    members: list[list[int]]  # per continuation: the requests asking for it (identical ones share it)
    targets: list[list[tuple[int, int]]]

    @property
    def context_length(self) -> int:
        return self.segments.count(0)


def pack_group(context: list[int], continuations: list[list[int]], members: list[list[int]]) -> PackedRow:
    """Lay out ``context`` + each continuation but its last token; record where each token is predicted."""
    tokens, positions, segments = list(context), list(range(len(context))), [0] * len(context)
    targets: list[list[tuple[int, int]]] = []
    last_context = len(context) - 1
    for j, cont in enumerate(continuations):
        start = len(tokens)
        row_targets = [(last_context, cont[0])]
        for k, token in enumerate(cont[:-1]):
            tokens.append(token)
            positions.append(len(context) + k)
            segments.append(j + 1)
            row_targets.append((start + k, cont[k + 1]))
        targets.append(row_targets)
    return PackedRow(tokens, positions, segments, members, targets)


def tree_mask(segments: list[int], length: int) -> torch.Tensor:
    """``[length, length]`` bool: causal, and a continuation sees the context and its own segment only.

    Padding positions (beyond ``len(segments)``) see only themselves, so no attention row is empty.
    """
    seg = torch.full((length,), -1, dtype=torch.long)
    seg[: len(segments)] = torch.tensor(segments, dtype=torch.long)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same = seg[:, None] == seg[None, :]
    sees_context = (seg[None, :] == 0) & (seg[:, None] >= 0)
    return (causal & (same | sees_context)) | torch.eye(length, dtype=torch.bool)


MIN_SHARED_PREFIX = 32  # tokens: a shorter common prefix is recomputed with each row


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def prefix_clusters(
    rows: list[PackedRow], min_prefix: int = MIN_SHARED_PREFIX
) -> list[tuple[int, list[PackedRow]]]:
    """Rows grouped by a shared context prefix: ``(prefix length, rows)``; 0 for rows that share
    fewer than ``min_prefix`` tokens with any other. A prefix stops short of every row's last
    context token (that position predicts the first continuation token)."""
    ordered = sorted(rows, key=lambda row: row.tokens[: row.context_length])
    clusters: list[tuple[int, list[PackedRow]]] = []
    for row in ordered:
        if clusters:
            shared, members = clusters[-1]
            head = members[0]
            n = min(
                shared if len(members) > 1 else head.context_length - 1,
                common_prefix_length(head.tokens[: head.context_length], row.tokens[: row.context_length]),
                row.context_length - 1,
            )
            if n >= min_prefix:
                clusters[-1] = (n, [*members, row])
                continue
        clusters.append((0, [row]))
    singles = [row for n, members in clusters if n == 0 for row in members]
    return [(n, members) for n, members in clusters if n > 0] + ([(0, singles)] if singles else [])


def length_batches(rows: list[PackedRow], size: int) -> list[list[PackedRow]]:
    """Rows sorted longest first, cut into batches of at most ``size`` rows, a new batch starting
    where a row is under half the batch's longest (padding stays under half of every batch)."""
    batches: list[list[PackedRow]] = []
    for row in rows:
        if batches and len(batches[-1]) < size and 2 * len(row.tokens) >= len(batches[-1][0].tokens):
            batches[-1].append(row)
        else:
            batches.append([row])
    return batches


def __getattr__(name: str) -> Any:
    """``SharedContextHFLM`` is defined on first use: lm-eval is an optional dependency."""
    if name == "SharedContextHFLM":
        return _shared_context_hflm()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@lru_cache(maxsize=1)
def _shared_context_hflm() -> type:
    from lm_eval.models import huggingface as lm_eval_hf
    from lm_eval.models.huggingface import HFLM

    class SharedContextHFLM(HFLM):
        """``HFLM`` whose ``_loglikelihood_tokens`` forwards each distinct context once (see module doc)."""

        def _loglikelihood_tokens(
            self,
            requests: list[Request],
            disable_tqdm: bool = False,
            override_bs: int | None = None,
        ) -> list[tuple[float, bool]]:
            if self.backend != "causal" or not requests:
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
            groups: dict[tuple[int, ...], dict[tuple[int, ...], list[int]]] = {}
            for i, (_, context, continuation) in enumerate(requests):
                groups.setdefault(tuple(context), {}).setdefault(tuple(continuation), []).append(i)
            rows, too_long = [], []
            for context, by_continuation in groups.items():
                if len(context) + max(len(c) for c in by_continuation) > self.max_length + 1:
                    too_long.extend(i for members in by_continuation.values() for i in members)
                else:
                    conts = [list(c) for c in by_continuation]
                    rows.append(pack_group(list(context), conts, list(by_continuation.values())))
            results: list[tuple[float, bool] | None] = [None] * len(requests)
            if too_long:
                fallback = super()._loglikelihood_tokens([requests[i] for i in too_long], True, override_bs)
                for i, answer in zip(too_long, fallback, strict=True):
                    results[i] = answer
            rows.sort(key=lambda row: -len(row.tokens))  # longest first, as HFLM (memory errors early)
            size = int(override_bs or (self.batch_size if self.batch_size != "auto" else 16)) or 16
            pbar = lm_eval_hf.tqdm(
                total=len(requests),
                disable=disable_tqdm or self.rank != 0,
                desc="Running loglikelihood requests",
            )
            pbar.update(len(too_long))
            for shared, cluster in prefix_clusters(rows, self.min_shared_prefix):
                prefix = self._prefix_states(cluster[0].tokens[:shared]) if shared else None
                cluster.sort(key=lambda row: -len(row.tokens))
                for batch in length_batches(cluster, size):
                    for row, answers in zip(batch, self._score_rows(batch, prefix), strict=True):
                        for members, answer in zip(row.members, answers, strict=True):
                            for i in members:
                                results[i] = answer
                                self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
                            pbar.update(len(members))
            pbar.close()
            return [answer for answer in results if answer is not None]

        min_shared_prefix = MIN_SHARED_PREFIX

        def _prefix_states(self, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
            """Per layer, the keys and values of one ``prefix`` sequence (shared by a cluster's rows)."""
            ids = torch.tensor([prefix], dtype=torch.long, device=self.device)
            with torch.no_grad(), self._autocast():
                out = self.model.get_decoder()(input_ids=ids, use_cache=True)
            return [(layer.keys, layer.values) for layer in out.past_key_values.layers]

        def _score_rows(
            self, batch: list[PackedRow], prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        ) -> list[list[tuple[float, bool]]]:
            """One forward over right-padded packed rows (their first ``prefix`` tokens read from the
            given keys and values); logits only at the predicting positions."""
            shared = prefix[0][0].shape[-2] if prefix else 0
            length = max(len(row.tokens) for row in batch) - shared
            pad = pad_token_id(self.tokenizer)
            ids = torch.full((len(batch), length), pad, dtype=torch.long)
            positions = torch.zeros((len(batch), length), dtype=torch.long)
            mask = torch.ones((len(batch), 1, length, shared + length), dtype=torch.bool)
            for b, row in enumerate(batch):
                ids[b, : len(row.tokens) - shared] = torch.tensor(row.tokens[shared:])
                positions[b, : len(row.positions) - shared] = torch.tensor(row.positions[shared:])
                mask[b, 0, :, shared:] = tree_mask(row.segments[shared:], length)
            cache = None
            if prefix:
                from transformers import DynamicCache

                n = len(batch)
                states = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prefix]
                cache = DynamicCache(ddp_cache_data=states, config=self.model.config)
            hidden = self._final_hidden(
                ids.to(self.device), positions.to(self.device), mask.to(self.device), cache
            )
            where = [
                (b, pos - shared, tok)
                for b, row in enumerate(batch)
                for targets in row.targets
                for pos, tok in targets
            ]
            b_idx = torch.tensor([w[0] for w in where], device=self.device)
            p_idx = torch.tensor([w[1] for w in where], device=self.device)
            wanted = torch.tensor([w[2] for w in where], device=self.device)
            with self._autocast():
                logits = self.model.get_output_embeddings()(hidden[b_idx, p_idx])
            logprobs = F.log_softmax(logits.float(), dim=-1)
            token_lp = logprobs.gather(1, wanted[:, None]).squeeze(1).tolist()
            greedy = (logprobs.argmax(dim=-1) == wanted).tolist()
            out, k = [], 0
            for row in batch:
                answers = []
                for targets in row.targets:
                    n = len(targets)
                    answers.append((float(sum(token_lp[k : k + n])), all(greedy[k : k + n])))
                    k += n
                out.append(answers)
            return out

        def _final_hidden(
            self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Any = None
        ) -> torch.Tensor:
            attn = getattr(self.model.config, "_attn_implementation", "sdpa")
            if attn != "sdpa":  # eager and others add the mask to the scores
                mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(
                    ~mask, torch.finfo(torch.float32).min
                )
            decoder = self.model.get_decoder()
            cached: dict[str, Any] = {"use_cache": False}
            if cache is not None:
                # transformers 5 names the argument `cache` (`past_key_values` is deprecated there)
                name = (
                    "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
                )
                cached = {name: cache, "use_cache": True}
            with torch.no_grad(), self._autocast():
                out = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, **cached)
            return out.last_hidden_state

        def _autocast(self) -> contextlib.AbstractContextManager:
            return autocast_to(self.device.type, self.mixed_precision_dtype)

    return SharedContextHFLM


def supports_shared_context(model: Any) -> bool:
    """Decoder + output head reproduce the model's logits (no logit softcapping or scaling in between)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "get_decoder") or not hasattr(model, "get_output_embeddings"):
        return False
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return False
    return not getattr(config, "is_encoder_decoder", False)
