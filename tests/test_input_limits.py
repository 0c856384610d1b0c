"""Limits found early and named: a max_length no prompt fits (before any generation), a model path
that does not exist, a full disk under the cache, documents cut past their gold answer (per row)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from ssr.data.prompts import PromptConfig
from ssr.data.records import Record
from ssr.runtime.configs import ConfigError


def test_max_length_shorter_than_every_prompt_stops_before_generation(tiny_cfg):
    """Before: found at tokenization, after generating and judging every row."""
    from ssr.cli._hydra import build

    cfg = tiny_cfg("method=ssr", "judge=rule_qa", "data.max_length=24")
    datamodule = build(cfg.data)
    with pytest.raises(
        ConfigError, match=r"data\.max_length=24 is shorter than every prompt: the shortest, row"
    ):
        datamodule.prepare_data()
    assert not (Path(cfg.paths.cache_dir) / "generations").exists(), "nothing was generated"


def test_a_model_path_that_does_not_exist_says_so():
    """Before: Hugging Face's 'Repo id must use alphanumeric chars' about /nonexistent."""
    from ssr.models.loading import ModelSpec, load_tokenizer

    for path in ("/nonexistent", "./no/such/model"):
        with pytest.raises(ConfigError, match=rf"^model path {path} does not exist"):
            load_tokenizer(ModelSpec(name_or_path=path))


def test_disk_full_under_the_cache_names_the_file(tmp_path):
    """Before: '[Errno 28] No space left on device' and no file name. /dev/full is a real full disk."""
    from ssr.runtime.cache import JsonlCache

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    path = tmp_path / "generations" / "x.jsonl"
    cache = JsonlCache(path)
    path.symlink_to("/dev/full")
    with pytest.raises(OSError, match=rf"No space left on device: appending 2 rows to {path} failed"):
        cache.put_many([("a", {"text": "1"}), ("b", {"text": "2"})])
    assert "a" not in cache and "b" not in cache, "rows that did not reach the disk are not served"


def test_documents_cut_past_their_gold_answer_are_reported_by_row(tokenizer, caplog):
    """Before: only a count of truncated documents."""
    from ssr.data.tokenize import tokenize_all

    filler = "The river runs north through the valley. " * 40
    rows = [
        Record(id="early", document="The capital is Paris. " + filler, question="Capital?", gold="Paris"),
        Record(id="late", document=filler + "The capital is Lyon.", question="Capital?", gold="Lyon"),
        Record(id="short", document="The capital is Rome.", question="Capital?", gold="Rome"),
    ]
    with caplog.at_level(logging.INFO, logger="ssr.data.tokenize"):
        _, report = tokenize_all(tokenizer, rows, [r.gold for r in rows], PromptConfig(), max_length=200)
    assert report.truncated_ids == ["early", "late"] and report.answer_cut == ["late"]
    assert "2 documents cut to fit max_length=200: early, late" in caplog.text
    assert "1 rows lost their gold answer when their document was cut to max_length=200" in caplog.text
    assert caplog.text.rstrip().endswith(": late")
