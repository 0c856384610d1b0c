"""vLLM generation (GPU; optional extra ssr[vllm])."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedTokenizerBase

from ssr.generation.config import DecodingConfig
from ssr.generation.hf import decode_new_tokens, prompt_token_ids

if TYPE_CHECKING:
    pass


def load_vllm(model_path: str, **engine_kwargs: Any) -> Any:
    """A ``vllm.LLM`` engine (GPU; optional extra ``ssr[vllm]``); build it once per generator."""
    try:
        from vllm import LLM
    except ImportError as err:
        raise ImportError("generator=vllm needs vLLM: pip install 'ssr[vllm]' (GPU only)") from err
    return LLM(model=model_path, **engine_kwargs)


def vllm_generate(
    llm: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    decoding: DecodingConfig,
    batch_size: int = 256,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
    progress: bool = True,
) -> list[str]:
    """vLLM backend: the same prompt token ids and decoding of the new ids as :func:`hf_generate`.

    Prompts go in as token ids (``TokensPrompt``): given text, vLLM would tokenize it with special
    tokens again (a second BOS on Llama-3 / Mistral). Chunks of ``batch_size`` prompts (vLLM
    batches inside a chunk); ``on_batch(indices, texts)`` runs after each, so the cache is
    written as generation goes. Generation stops at the tokenizer's EOS, as the hf path does.
    """
    from vllm import SamplingParams

    params = SamplingParams(
        max_tokens=decoding.max_new_tokens,
        seed=decoding.seed,
        temperature=decoding.temperature if decoding.do_sample else 0.0,
        top_p=decoding.top_p if decoding.do_sample else 1.0,
        stop_token_ids=[tokenizer.eos_token_id],
    )
    ids = prompt_token_ids(tokenizer, prompts)
    texts: list[str] = []
    for start in range(0, len(ids), batch_size):
        chunk = [{"prompt_token_ids": p} for p in ids[start : start + batch_size]]
        outputs = llm.generate(chunk, params, use_tqdm=progress)
        new = decode_new_tokens(tokenizer, [list(o.outputs[0].token_ids) for o in outputs])
        texts.extend(new)
        if on_batch:
            on_batch(list(range(start, start + len(chunk))), new)
    return texts
