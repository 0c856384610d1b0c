"""The crash-safe JSONL cache."""

from __future__ import annotations

import pytest

from ssr.runtime.cache import CacheCorruptError, JsonlCache


def test_put_get_and_reload(tmp_path):
    c = JsonlCache(tmp_path / "c.jsonl")
    c.put_many([("a", {"text": "1"}), ("b", {"text": "2"}), ("a", {"text": "ignored"})])
    c2 = JsonlCache(tmp_path / "c.jsonl")
    assert len(c2) == 2 and c2.get("a")["text"] == "1" and c2.get("zz") is None
    assert (c2.hits, c2.misses) == (1, 1)


def test_torn_last_line_is_dropped_not_parsed(tmp_path):
    path = tmp_path / "c.jsonl"
    JsonlCache(path).put_many([("a", {"text": "1"}), ("b", {"text": "2"})])
    with open(path, "ab") as fh:
        fh.write(b'{"key": "c", "text": "par')  # killed mid-write
    c = JsonlCache(path)
    assert len(c) == 2 and "c" not in c and c.torn_lines_dropped == 1
    c.put("c", {"text": "3"})
    assert len(JsonlCache(path)) == 3 and path.read_bytes().count(b"\n") == 3


def test_complete_json_without_newline_counts_as_torn(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"key": "a", "text": "1"}\n{"key": "b", "text": "2"}')
    assert list(JsonlCache(path)._rows) == ["a"]


def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"key": "a"}\nGARBAGE\n{"key": "b"}\n')
    with pytest.raises(CacheCorruptError, match="line 2"):
        JsonlCache(path)
