"""The continuous engine's decode-attention kernel: built for this CPU, equal to torch's SDPA per
slot position, used by the engine only where it passes its check, and never silently where forced."""

from __future__ import annotations

import logging

import pytest
import torch

from ssr.generation import decode_attention as att
from ssr.generation.continuous import Sampling, continuous_generate_ids
from ssr.models.loading import tiny_random_model


@pytest.fixture(autouse=True)
def _fresh_choice():
    att._resolve.cache_clear()
    yield
    att._resolve.cache_clear()


def _inputs(dtype, slots=5, kv=2, group=3, dim=64, length=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(slots, kv, group, dim, generator=gen).to(dtype)
    # the cache holds more slots and positions than the step reads (as the engine's does)
    keys, values = (torch.randn(slots + 2, kv, length, dim, generator=gen).to(dtype) for _ in range(2))
    pos = torch.tensor([0, 7, length - 1, 3, 21][:slots])
    return q, keys, values, pos


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize(("group", "dim"), [(3, 64), (2, 16), (1, 128)])
def test_kernel_equals_sdpa_at_each_slots_own_position(dtype, tol, group, dim):
    kernel = att.build()
    assert kernel is not None, "the CI machine has a C++ compiler: the kernel must build"
    q, keys, values, pos = _inputs(dtype, group=group, dim=dim)
    out = kernel(q, keys, values, pos)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), att.sdpa(q, keys, values, pos).float(), atol=tol, rtol=tol)
    # slot 0 attends position 0 only: its output is its single value row, whatever lies after it
    torch.testing.assert_close(
        out[0].float(), values[0, :, :1].expand(-1, group, -1).float(), atol=tol, rtol=0
    )


def test_kernel_rejects_what_it_cannot_compute():
    kernel = att.build()
    q, keys, values, pos = _inputs(torch.float32, dim=48)
    with pytest.raises(RuntimeError, match="head dim 48"):
        kernel(q, keys, values, pos)
    q, keys, values, pos = _inputs(torch.float32)
    with pytest.raises(RuntimeError, match="outside the cache"):
        kernel(q, keys, values, pos + 100)


def test_engine_generates_the_same_ids_with_the_kernel_and_with_sdpa(tokenizer, monkeypatch):
    model = tiny_random_model(tokenizer, {"num_hidden_layers": 3, "initializer_range": 0.3}, seed=2).eval()
    prompts = [
        tokenizer(p, add_special_tokens=False)["input_ids"] for p in ("Box 1 is red.", "Where? " * 9, "Hi")
    ]
    sampling = Sampling(max_new_tokens=24)
    out = {}
    for choice in ("kernel", "sdpa"):
        monkeypatch.setenv(att.ENV, choice)
        att._resolve.cache_clear()
        assert att.decode_attention("cpu", 2, 2, 16, torch.float32) is (
            att.sdpa if choice == "sdpa" else att.build()
        )
        out[choice] = continuous_generate_ids(model, prompts, sampling, slots=2, dtype=torch.float32)
    assert out["kernel"] == out["sdpa"] and all(len(r) == 24 for r in out["kernel"])


def test_auto_keeps_sdpa_when_the_kernel_fails_its_check(monkeypatch, caplog):
    monkeypatch.setenv(att.ENV, "auto")
    wrong = lambda q, k, v, pos: att.sdpa(q, k, v, pos) + 1  # noqa: E731
    monkeypatch.setattr(att, "build", lambda: wrong)
    with caplog.at_level(logging.WARNING, logger=att.__name__):
        assert att.decode_attention("cpu", 3, 3, 64, torch.bfloat16) is att.sdpa
    assert "differs from SDPA" in caplog.text


def test_auto_follows_the_probe_and_forcing_an_unbuildable_kernel_is_an_error(monkeypatch):
    def slow(q, k, v, pos):  # right, and slower than SDPA itself by ~20 ms a call
        sum(range(10**6))
        return att.sdpa(q, k, v, pos)

    monkeypatch.setattr(att, "build", lambda: slow)
    monkeypatch.setenv(att.ENV, "auto")
    assert att.decode_attention("cpu", 3, 3, 64, torch.float32) is att.sdpa
    monkeypatch.setattr(att, "build", lambda: None)
    att._resolve.cache_clear()
    assert att.decode_attention("cpu", 3, 3, 64, torch.float32) is att.sdpa  # auto: SDPA
    monkeypatch.setenv(att.ENV, "kernel")
    with pytest.raises(RuntimeError, match="could not be built"):
        att.decode_attention("cpu", 3, 3, 64, torch.float32)
    monkeypatch.setenv(att.ENV, "fastest")
    with pytest.raises(ValueError, match="SSR_DECODE_ATTENTION"):
        att.decode_attention("cpu", 3, 3, 64, torch.float32)
