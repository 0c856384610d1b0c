"""Generation -> judging -> selection through the caches, and the stand-alone stage entry points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssr.generation.config import DecodingConfig
from ssr.generation.generator import cached_generate
from ssr.runtime.cache import JsonlCache


def _selection(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "selection.jsonl").read_text().splitlines()]


def test_ssr_pipeline_second_run_hits_every_cache(tiny_cfg):
    from ssr.cli.stages import judge

    cfg = tiny_cfg("method=ssr", "judge.threshold=0.0")
    first = judge(cfg)["extra"]["stages"]
    assert first["generate_self"]["computed"] == 16 and first["generate_self"]["cached"] == 0
    assert first["judge_self"]["computed"] == 16
    second = judge(cfg)["extra"]["stages"]
    assert second["generate_self"] == {**second["generate_self"], "cached": 16, "computed": 0}
    assert second["judge_self"]["cached"] == 16 and second["judge_self"]["computed"] == 0
    rows = _selection(Path(cfg.paths.output_dir))
    assert len(rows) == 16 and len({r["id"] for r in rows}) == 16
    # threshold 0 accepts every answerable row's own answer; a random model never refuses
    assert all(r["source"] == "self" for r in rows if r["answerable"])
    assert all(r["target"] == r["self_response"] for r in rows if r["source"] == "self")


@pytest.mark.parametrize(
    "method, sources", [("sdft", {"rewrite", "gold"}), ("s3ft", {"self", "paraphrase", "gold"})]
)
def test_rewrite_methods_run_end_to_end(tiny_cfg, method, sources):
    from ssr.cli.stages import judge

    cfg = tiny_cfg(f"method={method}", "judge.threshold=0.0")
    stats = judge(cfg)
    assert "generate_rewrite" in stats["extra"]["stages"]
    used = {r["source"] for r in _selection(Path(cfg.paths.output_dir))}
    assert used <= sources and len(used) >= 1
    assert stats["judge_accept_rate_rewrite"] is not None


def test_generation_resumes_after_interruption_without_loss_or_duplicates(tmp_path):
    prompts = [f"prompt {i}" for i in range(10)]
    calls: list[str] = []

    def flaky(batch_prompts, on_batch, fail_after=2):
        for b, start in enumerate(range(0, len(batch_prompts), 3)):
            if fail_after is not None and b == fail_after:
                raise KeyboardInterrupt("killed")
            chunk = list(range(start, min(start + 3, len(batch_prompts))))
            calls.extend(batch_prompts[i] for i in chunk)
            on_batch(chunk, [f"answer to {batch_prompts[i]}" for i in chunk])

    cache = JsonlCache(tmp_path / "gen.jsonl")
    with pytest.raises(KeyboardInterrupt):
        cached_generate(prompts, cache, "fp", DecodingConfig(), flaky)
    assert len(JsonlCache(tmp_path / "gen.jsonl")) == 6
    texts, stats = cached_generate(
        prompts,
        JsonlCache(tmp_path / "gen.jsonl"),
        "fp",
        DecodingConfig(),
        lambda p, cb: flaky(p, cb, fail_after=None),
    )
    assert texts == [f"answer to {p}" for p in prompts]
    assert stats.cached == 6 and stats.generated == 4
    assert sorted(calls) == sorted(prompts), "every prompt generated exactly once"
    lines = (tmp_path / "gen.jsonl").read_text().splitlines()
    assert len(lines) == 10 and len({json.loads(x)["key"] for x in lines}) == 10


def test_decoding_config_is_part_of_the_key(tmp_path):
    cache = JsonlCache(tmp_path / "gen.jsonl")

    def gen(p, cb):
        cb(list(range(len(p))), ["x"] * len(p))

    cached_generate(["a"], cache, "fp", DecodingConfig(max_new_tokens=8), gen)
    _, stats = cached_generate(["a"], cache, "fp", DecodingConfig(max_new_tokens=16), gen)
    assert stats.generated == 1


def test_ssr_without_judge_fails_before_generation(tiny_cfg):
    from ssr.cli._hydra import build

    cfg = tiny_cfg("method=ssr", "judge=none")
    with pytest.raises(ValueError, match="needs a judge"):
        build(cfg.data)
    assert not (Path(cfg.paths.cache_dir) / "generations").exists()
