"""The drift evaluation shared by 2 CPU processes (gloo) equals the one-process evaluation.

Every part of a record runs in both: the lm-eval suite (lm-eval's own document split, through the
LM object's rank and world size), self-drift (reference generation and scoring), kl_task (base
reference and scoring), IFEval replies and the grounded-QA task metrics. The processes are real
(``torch.multiprocessing`` spawn, a gloo process group on 127.0.0.1), the model is the tiny random
Llama built from a config; each record says how many items each rank computed (``ranks``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from ssr.runtime.distributed import Shard, active_shard, sharding

SOURCES = ("self_drift", "kl_task", "ifeval", "tasks.in_domain", "lm_eval")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _evaluator(data_root: str) -> Any:
    from ssr.data.embedded import generate
    from ssr.data.prompts import PromptConfig
    from ssr.eval.evaluator import Evaluator
    from ssr.eval.ifeval import IFEvalConfig
    from ssr.eval.kl_task import KLTaskConfig
    from ssr.eval.self_drift import SelfDriftConfig
    from ssr.eval.suite import SuiteConfig
    from ssr.eval.task_sets import TaskMetricsConfig

    return Evaluator(
        SuiteConfig(
            tasks=["ssr_arc_easy", "ssr_truthfulqa_mc1"],  # 1 document: run on rank 0 alone
            limits={"ssr_arc_easy": 5, "ssr_truthfulqa_mc1": 1},
            batch_size=4,
        ),
        SelfDriftConfig(limit=6, max_new_tokens=6, batch_size=2, cache=False),
        TaskMetricsConfig(max_new_tokens=6),
        PromptConfig(),
        task_sets={"in_domain": generate("test", n_docs=2, questions_per_doc=3)},
        max_prompt_tokens=96,
        cache_base=False,
        data_root=data_root,
        kl_task=KLTaskConfig(max_rows=None, batch_size=2),
        ifeval=IFEvalConfig(limit=4, max_gen_toks=6, batch_size=2, cache=False),
    )


def _evaluate(rank: int, world_size: int, port: int, out: str, data_root: str) -> None:
    """One process of an evaluation: the base, then a perturbed model (a trained one's stand-in);
    rank 0 writes both records and the item files under ``out``."""
    torch.set_num_threads(1)
    if world_size > 1:
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
        )
    from ssr.eval.items import ITEMS_DIR, ItemSink
    from ssr.models.loading import ModelSpec, load_tokenizer, tiny_random_model

    tokenizer = load_tokenizer(ModelSpec(name_or_path="tiny-random"))
    model = tiny_random_model(tokenizer, seed=0)
    ev = _evaluator(data_root)
    g = torch.Generator().manual_seed(1)
    rows = [
        (ids, [-100] * 4 + ids[4:])
        for ids in (torch.randint(5, 900, (n,), generator=g).tolist() for n in (9, 12, 7, 10, 8))
    ]
    ev.kl_task.set_rows([f"r{i}" for i in range(len(rows))], rows, 0)

    def sink(tag: str) -> ItemSink | None:
        return ItemSink(Path(out) / ITEMS_DIR, tag) if rank == 0 else None

    with sharding(Shard.of_process_group()):
        base = ev.evaluate_base(model, tokenizer, precision=None, items=sink("base"))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        epoch = ev.evaluate(model, tokenizer, "epoch", precision=None, epoch=0, items=sink("epoch_0"))
    if rank == 0:
        Path(out, "records.json").write_text(json.dumps({"base": base, "epoch": epoch}))
    if world_size > 1:
        torch.distributed.destroy_process_group()


def _run(world_size: int, out: Path, cache: Path, data_root: Path) -> dict[str, Any]:
    import torch.multiprocessing as mp

    os.environ["SSR_CACHE"] = str(cache)  # the spawned processes inherit it
    args = (world_size, _free_port(), str(out), str(data_root))
    mp.start_processes(_evaluate, args=args, nprocs=world_size, start_method="spawn", join=True)
    return json.loads((out / "records.json").read_text())


def _close(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON values differ beyond float tolerance."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in _close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: lengths {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _close(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, int | float):
        same = (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)
        return [] if same else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.slow
def test_two_processes_give_the_one_process_record_each_computing_part(tmp_path, data_root, monkeypatch):
    from ssr.eval.items import load_items

    monkeypatch.setenv("SSR_CACHE", str(tmp_path / "cache1"))
    one = _run(1, tmp_path / "one", tmp_path / "cache1", data_root)
    # private caches (nothing reused), but the same generation engine (measured once, cached)
    shutil.copytree(tmp_path / "cache1" / "generation_engine", tmp_path / "cache2" / "generation_engine")
    two = _run(2, tmp_path / "two", tmp_path / "cache2", data_root)

    for stage in ("base", "epoch"):
        a, b = one[stage], two[stage]
        assert "ranks" not in a
        counts = b["ranks"]["items"]
        assert b["ranks"]["world_size"] == 2 and b["ranks"]["mode"] == "split"
        assert set(SOURCES) <= set(counts), counts
        for source in SOURCES:  # each rank computed part of every source
            assert len(counts[source]) == 2 and min(counts[source]) > 0, (stage, source, counts)
        drop = ("seconds", "ranks", "cached")
        diffs = _close(
            {k: v for k, v in a.items() if k not in drop}, {k: v for k, v in b.items() if k not in drop}
        )
        assert not diffs, (stage, diffs[:5])
    assert abs(two["epoch"]["scores"]["self_drift"]["nll_increase"]) > 1e-3  # the perturbed model moved
    assert sum(two["base"]["ranks"]["items"]["self_drift"]) == 6
    assert two["base"]["ranks"]["items"]["tasks.in_domain"] == [3, 3]

    # the same items, written once (rank 0), with the same values
    items_one, items_two = load_items(tmp_path / "one"), load_items(tmp_path / "two")
    assert set(items_one) == set(items_two) == {"base", "epoch_0"}
    for tag in items_one:
        assert set(items_one[tag]) == set(items_two[tag])
        for source in items_one[tag]:
            assert list(items_one[tag][source]) == list(items_two[tag][source]), (tag, source)
            assert not _close(items_one[tag][source], items_two[tag][source]), (tag, source)


def test_a_share_is_whole_batches_dealt_round_robin():
    """Rank r runs batches r, r + W, ... of the length-sorted order, so its own sort and batching
    rebuild one process's batches; with fewer batches than ranks they are cut smaller."""
    rows = [[0] * n for n in (3, 9, 5, 7, 1, 8, 2)]
    seen: list[list[int]] = []

    def run(part: list[list[int]]) -> list[int]:
        seen.append([len(r) for r in part])
        return [len(r) for r in part]

    lengths = [len(r) for r in rows]
    assert Shard().map(rows, run, source="x", batch_size=2, length=len) == lengths  # one process: all
    # order 9 8 7 5 3 2 1, batches of 2: [9 8] [7 5] [3 2] [1] -> rank 0: [9 8] [3 2], rank 1: [7 5] [1]
    assert Shard(0, 2).take([[9, 8], [7, 5], [3, 2], [1]]) == [[9, 8], [3, 2]]
    shard = Shard(1, 2)
    shard.all_gather = lambda obj: [obj, obj]  # type: ignore[method-assign]  (no process group here)
    seen.clear()
    shard.map(rows, run, source="x", batch_size=2, length=len)
    assert seen == [[7, 5, 1]]
    seen.clear()
    shard.map(rows, run, source="x", batch_size=16, length=len)  # one batch of 7: cut into 4 + 3
    assert seen == [[3, 2, 1]]  # order 9 8 7 5 | 3 2 1
    lockstep = Shard(1, 2, split=False)
    assert lockstep.take(rows) == rows and lockstep.parts == 1


def test_outside_a_sharded_evaluation_the_process_is_alone():
    assert active_shard() == Shard()
    with sharding(Shard(0, 1)) as shard:
        assert active_shard() is shard
        assert shard.main_decides(lambda: 3) == 3 and shard.all_gather("a") == ["a"]
    assert active_shard() == Shard()
