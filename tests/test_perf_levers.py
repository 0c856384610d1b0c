"""Speed levers that must not change the loss: padding-free packing, frozen weights precast to bf16."""

from __future__ import annotations

import pytest
import torch

from ssr.data.prompts import PromptConfig
from ssr.data.records import Record
from ssr.data.tokenize import IGNORE_INDEX, tokenize_all
from ssr.models.loading import ModelSpec, apply_peft, cast_frozen_linear_weights, tiny_random_model
from ssr.training.datamodule import collate
from ssr.training.module import OptimConfig, response_token_loss

LORA = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear", "lora_dropout": 0.0}


def _rows(tokenizer, n=5):
    recs = [
        Record(
            id=str(i),
            question=f"What colour is box {i}?",
            gold=" ".join(["The box is blue."] * (1 + i % 3)),
            document=f"Box {i} is blue. " * (1 + 2 * i),  # different lengths -> padding in a batch
        )
        for i in range(n)
    ]
    rows, _ = tokenize_all(tokenizer, recs, [r.gold for r in recs], PromptConfig(), 512)
    assert len({len(r.input_ids) for r in rows}) > 1
    return rows


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = response_token_loss(
        model, batch["input_ids"], batch["attention_mask"], batch["labels"], batch.get("position_ids")
    )
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_packed_batch_layout(tokenizer):
    rows = _rows(tokenizer)
    packed = collate(rows, tokenizer.pad_token_id, packing=True)
    total = sum(len(r.input_ids) for r in rows)
    assert packed["input_ids"].shape == (1, total) and packed["attention_mask"] is None
    assert packed["num_tokens"] == total
    starts = [0]
    for r in rows[:-1]:
        starts.append(starts[-1] + len(r.input_ids))
    pos = packed["position_ids"][0]
    assert [int(pos[s]) for s in starts] == [0] * len(rows)
    assert all(int(packed["labels"][0, s]) == IGNORE_INDEX for s in starts)
    padded = collate(rows, tokenizer.pad_token_id)
    assert packed["num_response_tokens"] == padded["num_response_tokens"]
    assert int((packed["labels"] != IGNORE_INDEX).sum()) == padded["num_response_tokens"]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_grads_equal_padded(tokenizer, attn):
    """No row may attend to another: packed and padded give the same loss and LoRA gradients."""
    model = tiny_random_model(tokenizer, {"attn_implementation": attn}, seed=0)
    model.config._attn_implementation = attn
    model = apply_peft(model, LORA)
    with torch.no_grad():  # LoRA B starts at zero; make the adapter matter for the gradient check
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    rows = _rows(tokenizer)
    padded_loss, padded_grads = _loss_and_grads(model, collate(rows, tokenizer.pad_token_id))
    packed_loss, packed_grads = _loss_and_grads(model, collate(rows, tokenizer.pad_token_id, packing=True))
    assert packed_loss.item() == pytest.approx(padded_loss.item(), rel=1e-5)
    assert padded_grads.keys() == packed_grads.keys() and padded_grads
    for name, g in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_packing_without_block_mask_would_differ(tokenizer):
    """Guard: the equality above is meaningful (rows attending across the pack change the loss)."""
    model = tiny_random_model(tokenizer, seed=0)
    rows = _rows(tokenizer)
    b = collate(rows, tokenizer.pad_token_id, packing=True)
    with torch.no_grad():
        blocked = response_token_loss(model, b["input_ids"], None, b["labels"], b["position_ids"])
        leaky = response_token_loss(model, b["input_ids"], None, b["labels"], None)  # one long sequence
    assert abs(blocked.item() - leaky.item()) > 1e-3


def test_precast_frozen_weights_is_bit_identical_under_autocast(tokenizer):
    torch.manual_seed(0)
    model = apply_peft(tiny_random_model(tokenizer, seed=0), LORA)
    b = collate(_rows(tokenizer), tokenizer.pad_token_id)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss, ref_grads = _loss_and_grads(model, b)
    n = cast_frozen_linear_weights(model, torch.bfloat16)
    assert n > 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.dtype == torch.float32, f"{name}: trainable weights stay fp32"
        elif "embed_tokens" in name:
            assert p.dtype == torch.float32, "the (tied) embedding stays fp32"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = _loss_and_grads(model, b)
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(grads[k], ref_grads[k]) for k in ref_grads)


@pytest.mark.parametrize(
    ("precision", "expect"), [("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)]
)
def test_module_precasts_frozen_weights_only_under_bf16_mixed(precision, expect):
    import lightning as L

    from ssr.training.module import SSRModule

    module = SSRModule(model=ModelSpec(name_or_path="tiny-random"), optim=OptimConfig(), peft=dict(LORA))
    module.trainer = L.Trainer(
        accelerator="cpu", devices=1, precision=precision, logger=False, enable_checkpointing=False
    )
    module.configure_model()
    base_q = module.model.get_base_model().model.layers[0].self_attn.q_proj
    assert base_q.base_layer.weight.dtype == expect
    assert base_q.lora_A["default"].weight.dtype == torch.float32


def test_generation_model_prepared_for_autocast_gives_identical_outputs(tokenizer):
    from ssr.generation.config import DecodingConfig
    from ssr.generation.hf import hf_generate
    from ssr.models.loading import cast_for_autocast_inference

    model = tiny_random_model(tokenizer, seed=1).eval()
    tokenizer.padding_side = "left"
    enc = tokenizer(["What colour is box 1?", "Box 2 is blue. " * 5], return_tensors="pt", padding=True)
    tokenizer.padding_side = "right"

    @torch.inference_mode()
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(**enc).logits
            ids = model.generate(
                **enc,
                max_new_tokens=6,
                min_new_tokens=6,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        return logits, ids

    logits, ids = run()
    n = cast_for_autocast_inference(model)
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    assert n > 0 and head.weight.dtype == torch.bfloat16 and embed.weight.dtype == torch.float32
    assert not any(p.requires_grad for p in model.parameters())
    logits_after, ids_after = run()
    assert torch.equal(logits_after, logits) and torch.equal(ids_after, ids)
    prompts = ["Question: what colour is box 3?", "Question: where is box 4? " * 3]
    texts = hf_generate(
        model,
        tokenizer,
        prompts,
        DecodingConfig(max_new_tokens=4),
        precision="bf16",
        progress=False,
        cache_implementation="static",
    )
    assert len(texts) == 2
