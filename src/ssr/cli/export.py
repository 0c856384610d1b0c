"""ssr-export ADAPTER_DIR --out DIR: merge a trained LoRA adapter into its base model.

    ssr-export outputs/<run>/adapter --out merged/
    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('merged')"

The base model is read from the run's config (or ``adapter_config.json``) and loaded in its
original dtype (not the bf16 copy training may have cast the frozen weights to); the adapter's
tokenizer (its chat template included) is written beside the merged weights.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ssr.models.loading import ModelSpec, adapter_base_spec, load_model, load_tokenizer

log = logging.getLogger("ssr.export")


def export_merged(
    adapter: str | Path,
    out: str | Path,
    base: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> Path:
    """Write ``base + adapter`` merged into plain weights (safetensors) + tokenizer to ``out``.

    ``trust_remote_code`` is the caller's own choice (the adapter's files cannot switch it on)."""
    from peft import PeftModel

    adapter, out = Path(adapter), Path(out)
    spec = adapter_base_spec(adapter, trust_remote_code=trust_remote_code)
    if base:
        spec = ModelSpec(
            name_or_path=base,
            revision=spec.revision,
            tokenizer=spec.tokenizer,
            trust_remote_code=trust_remote_code,
        )
    spec.dtype = dtype
    log.info("base model: %s (dtype %s)", spec.name_or_path, dtype)
    model, tokenizer = load_model(spec)
    if (adapter / "tokenizer_config.json").is_file():  # ssr-train saves the tokenizer it trained with
        tokenizer = load_tokenizer(ModelSpec(name_or_path=str(adapter), tokenizer=str(adapter)))
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    log.info("wrote %s", out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="ssr-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("adapter", type=Path, help="a PEFT adapter directory (<run>/adapter)")
    parser.add_argument("--out", type=Path, required=True, help="output directory for the merged model")
    parser.add_argument("--base", help="base model (hub id or dir) instead of the one the adapter names")
    parser.add_argument(
        "--dtype", default="auto", help="dtype to load and save the base in (default: its checkpoint's)"
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the base model's own Python code (only for a base you trust; never read from the adapter)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    export_merged(args.adapter, args.out, args.base, args.dtype, args.trust_remote_code)


if __name__ == "__main__":
    main()
