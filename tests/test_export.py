"""ssr-export: base + LoRA merged into a model from_pretrained loads, with the same logits; the
adapter names its base (ssr-eval needs no matching model=); model.chat_template overrides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cli_runs import cli_env
from ssr.cli.export import main as export_main
from ssr.models.loading import (
    EMBEDDED,
    SPEC_FILE,
    ModelSpec,
    adapter_base_spec,
    apply_peft,
    load_model,
    load_tokenizer,
    symbolic_name,
    tiny_random_model,
)


@pytest.fixture
def base_and_adapter(tmp_path, tokenizer):
    """A tiny base model saved as a local checkpoint and a LoRA adapter with non-zero weights."""
    base_dir = tmp_path / "base"
    tiny_random_model(tokenizer, seed=3).save_pretrained(base_dir, safe_serialization=True)
    tokenizer.save_pretrained(base_dir)
    model, _ = load_model(ModelSpec(name_or_path=str(base_dir)))
    peft_model = apply_peft(
        model, {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "lora_dropout": 0.0}
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # lora_B starts at 0 (a no-op adapter): make the merge matter
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    adapter_dir = tmp_path / "run" / "adapter"
    peft_model.save_pretrained(adapter_dir, safe_serialization=True)
    tokenizer.save_pretrained(adapter_dir)
    return base_dir, adapter_dir


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(["The capital of France is Paris.", "Hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**ids).logits.float()


def test_export_round_trip_logits_match_base_plus_adapter(base_and_adapter, tmp_path, tokenizer):
    from peft import PeftModel

    base_dir, adapter_dir = base_and_adapter
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        base_dir
    )
    out = tmp_path / "merged"
    export_main([str(adapter_dir), "--out", str(out)])

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir
    )
    base_only = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    want, got = _logits(reference, tokenizer), _logits(merged, tokenizer)
    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
    assert (want - _logits(base_only, tokenizer)).abs().max() > 1e-2  # the adapter changed the model
    saved_tok = AutoTokenizer.from_pretrained(out)
    assert saved_tok.chat_template == tokenizer.chat_template


def test_export_keeps_the_checkpoints_dtype(base_and_adapter, tmp_path, tokenizer):
    base_dir, adapter_dir = base_and_adapter
    bf16_dir = tmp_path / "base_bf16"
    AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16).save_pretrained(bf16_dir)
    tokenizer.save_pretrained(bf16_dir)
    export_main([str(adapter_dir), "--out", str(tmp_path / "m16"), "--base", str(bf16_dir)])
    assert (
        next(AutoModelForCausalLM.from_pretrained(tmp_path / "m16", dtype="auto").parameters()).dtype
        == torch.bfloat16
    )
    export_main([str(adapter_dir), "--out", str(tmp_path / "m32")])
    assert (
        next(AutoModelForCausalLM.from_pretrained(tmp_path / "m32", dtype="auto").parameters()).dtype
        == torch.float32
    )


def test_ssr_export_entry_point_help():
    proc = subprocess.run(
        [sys.executable, "-m", "ssr.cli.export", "--help"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "--out" in proc.stdout, proc.stderr[-2000:]


def test_adapter_base_spec_sources(base_and_adapter, tmp_path):
    base_dir, adapter_dir = base_and_adapter
    spec = adapter_base_spec(
        adapter_dir, {"name_or_path": "other/model", "dtype": "bfloat16", "tiny_config": {"a": 1}}
    )
    assert (spec.name_or_path, spec.dtype, spec.tiny_config) == (str(base_dir), "bfloat16", None)
    # the embedded model's cache dir (what PEFT writes for it) maps back to the name
    assert symbolic_name("/root/.cache/ssr/models/smollm2-135m-instruct-94502816") == EMBEDDED
    assert symbolic_name(str(base_dir)) == str(base_dir)
    # ssr-train writes the exact spec beside the adapter: it wins (a tiny-random base has no path)
    exact = {"name_or_path": "tiny-random", "dtype": "float32", "tiny_config": {"hidden_size": 32}, "seed": 5}
    (adapter_dir / SPEC_FILE).write_text(json.dumps(exact))
    spec = adapter_base_spec(adapter_dir, {"name_or_path": "ignored"})
    assert (spec.name_or_path, spec.tiny_config, spec.seed) == ("tiny-random", {"hidden_size": 32}, 5)
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter directory"):
        adapter_base_spec(tmp_path)


def test_chat_template_override_file_or_literal(tmp_path):
    literal = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    tok = load_tokenizer(ModelSpec(name_or_path="tiny-random", chat_template=literal))
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == "[user] hi\n"
    path = tmp_path / "template.jinja"
    path.write_text("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}")
    tok = load_tokenizer(ModelSpec(name_or_path="tiny-random", chat_template=str(path)))
    assert tok.apply_chat_template(msgs, tokenize=False) == "<user> hi\n"
    with pytest.raises(ValueError, match="neither a file nor a Jinja template"):
        load_tokenizer(ModelSpec(name_or_path="tiny-random", chat_template="chatml-missing.jinja"))


def test_base_model_without_chat_template_is_a_clear_error(tmp_path, tokenizer):
    bare = tmp_path / "bare"
    tokenizer.save_pretrained(bare)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in ("chat_template.jinja", "chat_template.json"):
        (bare / extra).unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"has no chat template: set model.chat_template="):
        load_tokenizer(ModelSpec(name_or_path="tiny-random", tokenizer=str(bare)))
    tok = load_tokenizer(
        ModelSpec(
            name_or_path="tiny-random", tokenizer=str(bare), chat_template="{{ messages[0]['content'] }}"
        )
    )
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "x"


def test_ssr_eval_reads_the_base_from_the_adapter(tiny_cfg):
    """A tiny-random run's adapter evaluated with the default model= (smollm2_135m): the base comes
    from the adapter's ssr_model.json, so nothing loads the embedded model."""
    from omegaconf import open_dict

    from ssr.cli.eval import evaluate
    from ssr.cli.train import train

    cfg = tiny_cfg(
        "method=sft",
        "eval/suite=none",
        "eval.self_drift.enabled=false",
        "eval.tasks.max_rows=2",
        "eval.tasks.max_new_tokens=2",
    )
    train(cfg)
    adapter = Path(cfg.paths.output_dir) / "adapter"
    assert json.loads((adapter / SPEC_FILE).read_text())["name_or_path"] == "tiny-random"
    with open_dict(cfg):
        cfg.adapter = str(adapter)
        cfg.model.name_or_path = "/nonexistent/base"  # would fail to load if it were used
    result = evaluate(cfg)
    assert result["model"] == "tiny-random" and result["final"]["tasks"]["in_domain"]["n"] == 2
