"""A judge whose replies are no verdict (``content: null``, rambling text) cannot turn SSR into SFT:
such replies are not rejections, are never cached, are counted in ``selection_stats.json``, and
past ``judge.max_unparseable`` the run stops with an error naming the judge, a reply and the count."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cli_runs import cli_env, train_cmd
from ssr.judges import JudgeError, run_judge
from ssr.runtime.cache import JsonlCache
from test_judge_faults import Reply, chat_reply, fake_server, items, make_judge


def null_content(n: int, request: dict) -> Reply:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": None}}]}
    return Reply(body=json.dumps(body).encode())


def test_null_replies_stop_the_judge_and_leave_nothing_cached(tmp_path: Path) -> None:
    """Before: 16 null replies were 16 cached rejections; the fixed server was never asked again."""
    path = tmp_path / "verdicts.jsonl"
    with fake_server(null_content) as server, pytest.raises(JudgeError) as err:
        run_judge(make_judge(server.url), items(16), JsonlCache(path), batch_size=4, progress=False)
    message = str(err.value)
    assert message.startswith("judge openai: 4 of 16 outputs are no verdict (unparseable)")
    assert "judge.max_unparseable=0.05" in message and "item 'r0': reply content is null" in message
    assert len(server.requests) == 4, "stopped after the first batch, not after judging everything"
    assert not path.exists() or not path.read_text().strip(), "no unparseable output is cached"
    with fake_server(lambda n, request: chat_reply("Yes")) as server:
        verdicts = run_judge(make_judge(server.url), items(16), JsonlCache(path), progress=False)
    assert all(v.accept and v.parsed for v in verdicts) and len(server.requests) == 16


def _train(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = train_cmd(
        "method=ssr", "judge=openai", f"judge.base_url={url}", "judge.api_key_env=null",
        "judge.max_retries=0", "data.max_val_rows=0", f"hydra.run.dir={tmp_path / 'run'}", *extra,
    )  # fmt: skip
    env = cli_env(SSR_CACHE=str(tmp_path / "cache"))
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_a_rambling_judge_stops_ssr_and_the_share_below_the_limit_is_recorded(tmp_path: Path) -> None:
    """Before: the run exited 0 with 100% gold targets while labelled SSR."""
    with fake_server(lambda n, request: chat_reply("Well, the answer could be read several ways")) as server:
        proc = _train(tmp_path, server.url)
    assert proc.returncode != 0
    assert "judge openai: " in proc.stderr and "outputs are no verdict (unparseable)" in proc.stderr
    assert "several ways" in proc.stderr
    run = tmp_path / "run"
    assert not (run / "summary.json").exists() and not (run / "adapter").exists()

    # the same judge, half of its replies usable, with a limit that allows it: the run trains and
    # selection_stats.json counts the replies that were no verdict
    def half(n: int, request: dict) -> Reply:
        return chat_reply("Yes" if n % 2 else "hmm")

    with fake_server(half) as server:
        proc = _train(tmp_path, server.url, "judge.max_unparseable=0.75", "resume.allow_config_change=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads((run / "selection_stats.json").read_text())
    assert stats["judge_unparseable_self"] == 8 and stats["judge_accept_rate_self"] == 1.0
    rows = [json.loads(line) for line in (run / "selection.jsonl").read_text().splitlines()]
    assert sum(r["source"] == "gold" and r["verdict"] is None for r in rows) == 8
