"""Own answers, rewrites and verdicts split across the ranks of a 2-process gloo run.

Each rank runs ``SSRDataModule.setup`` in an initialised process group, as Lightning's DDP
strategy calls it; the one-process run calls ``prepare_data`` then ``setup``. The caches say
which rank wrote each row (``rank``), so the split is read from what the code wrote.
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from pathlib import Path

import torch.multiprocessing as mp

from conftest import TINY_OVERRIDES, compose

# 16 rows in batches of 4: 4 generation batches and 4 judge batches, two for each rank
OVERRIDES = ["method=s3ft", "judge.threshold=0.0", "generator.batch_size=4", "judge.batch_size=4"]


def _config(run_dir: Path, cache_dir: Path, *extra: str):
    from omegaconf import open_dict

    cfg = compose([*TINY_OVERRIDES, *OVERRIDES, *extra])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.cache_dir = str(cache_dir)
        del cfg["hydra"]
    return cfg


def _rank(
    rank: int, world: int, port: int, run_dir: Path, cache_dir: Path, errors: Path, by_rank: dict
) -> None:
    """One rank: join the gloo group, select (its share), and note a failure in ``errors``;
    ``by_rank``: this rank's extra overrides."""
    import torch.distributed as dist

    from ssr.cli._hydra import build

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        build(_config(run_dir, cache_dir, *by_rank.get(rank, ())).data).setup("fit")
    except Exception as err:
        (errors / f"rank{rank}.txt").write_text(f"{type(err).__name__}: {err}")
    finally:
        dist.destroy_process_group()


def _run_two_ranks(run_dir: Path, cache_dir: Path, errors: Path, by_rank: dict | None = None) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    errors.mkdir(parents=True, exist_ok=True)
    ctx = mp.spawn(_rank, args=(2, port, run_dir, cache_dir, errors, by_rank or {}), nprocs=2, join=False)
    for _ in range(60):  # a rank left waiting for a failed one would hang here: fail instead
        if ctx.join(timeout=5):
            return
    for p in ctx.processes:
        p.kill()
    raise AssertionError("the two ranks did not finish within 300 s")


def _cache_rows(cache_dir: Path, stage: str) -> list[dict]:
    (path,) = (cache_dir / stage).glob("*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_ranks_split_generation_and_judging_and_select_as_one_process(tmp_path: Path) -> None:
    from ssr.cli._hydra import build

    one = build(_config(tmp_path / "one", tmp_path / "cache1").data)
    one.prepare_data()
    one.setup("fit")

    _run_two_ranks(tmp_path / "two", tmp_path / "cache2", tmp_path / "errors")
    assert not list((tmp_path / "errors").iterdir())

    # each row generated and judged once, half by each rank (whole batches of 4); the tiny model's
    # paraphrases are its own answers again, so their verdicts are found in the cache
    for stage, rows in [("generations", 32), ("verdicts", 16)]:
        cached = _cache_rows(tmp_path / "cache2", stage)
        assert len(cached) == rows and len({r["key"] for r in cached}) == rows, stage
        assert Counter(r["rank"] for r in cached) == {0: rows // 2, 1: rows // 2}, stage
    stages = json.loads((tmp_path / "two" / "selection_stats.json").read_text())["extra"]["stages"]
    assert {k: v["computed_by_rank"] for k, v in stages.items()} == {
        "generate_self": [8, 8],
        "generate_rewrite": [8, 8],
        "judge_self": [8, 8],
        "judge_rewrite": [0, 0],
    }
    alone = json.loads((tmp_path / "one" / "selection_stats.json").read_text())["extra"]["stages"]
    counts = lambda stages: {k: (v["rows"], v["cached"], v["computed"]) for k, v in stages.items()}  # noqa: E731
    assert counts(stages) == counts(alone)

    # the same texts and the same selection, byte for byte
    for stage in ("generations", "verdicts"):
        two = [{k: v for k, v in r.items() if k != "rank"} for r in _cache_rows(tmp_path / "cache2", stage)]
        one = _cache_rows(tmp_path / "cache1", stage)
        assert sorted(two, key=str) == sorted(one, key=str), stage
    assert (tmp_path / "two" / "selection.jsonl").read_bytes() == (
        tmp_path / "one" / "selection.jsonl"
    ).read_bytes()
    sources = Counter(json.loads(line)["source"] for line in (tmp_path / "one" / "selection.jsonl").open())
    assert len(sources) >= 2, sources  # a selection that mixes sources, not a trivial one


def test_a_failure_on_rank_0_reaches_rank_1_instead_of_leaving_it_waiting(tmp_path: Path) -> None:
    from ssr.cli._hydra import build

    cache = build(_config(tmp_path / "run", tmp_path / "cache").data).base_generator().cache_path
    cache.parent.mkdir(parents=True)
    cache.write_text('{"key": "a", "text": "x"}\nnot json\n{"key": "b", "text": "y"}\n')

    _run_two_ranks(tmp_path / "run", tmp_path / "cache", tmp_path / "errors")
    rank0 = (tmp_path / "errors" / "rank0.txt").read_text()
    rank1 = (tmp_path / "errors" / "rank1.txt").read_text()
    assert rank0.startswith("CacheCorruptError") and "line 2 is corrupt" in rank0
    assert rank1.startswith("ShardError: rank 0 of 2 failed: CacheCorruptError") and "line 2" in rank1


def test_ranks_that_would_write_different_generation_caches_stop_together(tmp_path: Path) -> None:
    """Precision ``auto`` measured apart on each rank could differ: each rank would generate into
    its own cache file and rank 0 would miss the rows of the others."""
    by_rank = {0: ["trainer.precision=32-true"], 1: ["trainer.precision=bf16-mixed"]}
    _run_two_ranks(tmp_path / "run", tmp_path / "cache", tmp_path / "errors", by_rank)
    for rank in (0, 1):
        error = (tmp_path / "errors" / f"rank{rank}.txt").read_text()
        assert error.startswith("ValueError: the ranks generate with different weights or autocast dtypes")
        assert "set trainer.precision explicitly" in error
    assert not (tmp_path / "cache" / "generations").exists() or not any(
        (tmp_path / "cache" / "generations").glob("*.jsonl")
    )
