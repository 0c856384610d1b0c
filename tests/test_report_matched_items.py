"""Drift at matched task gain from the evaluation items (ssr.report.matched_items): the item-level
values equal the aggregate interpolation, the CI covers item sampling, method differences pair the
items, and a run without items leaves the seed-only CI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ssr.eval.task_metrics import aggregate_row_scores
from ssr.report.curves import matched_differences, matched_rows, matched_table, method_curves, run_curves
from ssr.report.matched_items import item_level_rows
from ssr.report.runs import find_runs

N = 40  # prompts per evaluation
RNG = np.random.default_rng(7)
BASE_NLL = RNG.uniform(5, 50, N)  # per-prompt summed NLL of the base's own answers
BASE_TOKENS = RNG.integers(100, 800, N).astype(float)  # IFEval reply lengths of the base
BASE_ACC = (RNG.uniform(size=N) < 0.5).astype(float)


def _evaluation(root: Path, tag: str, nll: np.ndarray, acc: np.ndarray, tokens: np.ndarray) -> None:
    items = root / "eval_items" / tag
    items.mkdir(parents=True)
    (items / "self_drift.jsonl").write_text(
        "".join(json.dumps({"id": f"p{i}", "nll_sum": float(v)}) + "\n" for i, v in enumerate(nll))
    )
    (items / "ifeval.jsonl").write_text(
        "".join(
            json.dumps({"id": str(i), "prompt_level_loose_acc": float(a), "leak": 0.0, "n_tokens": float(t)})
            + "\n"
            for i, (a, t) in enumerate(zip(acc, tokens))
        )
    )


def _task_rows(answered: int) -> list[dict]:
    """20 in-domain test rows: the first ``answered`` of 10 answerable ones answered right (the
    rest answered wrong), the first ``answered`` of 10 unanswerable ones declined."""
    rows = [
        {
            "id": f"a{i}",
            "answerable": True,
            "predicted_unanswerable": False,
            "unanswerable_correct": 1.0,
            "answer_recall": float(i < answered),
            "answer_f1": float(i < answered),
        }
        for i in range(10)
    ]
    return rows + [
        {
            "id": f"u{i}",
            "answerable": False,
            "predicted_unanswerable": i < answered,
            "unanswerable_correct": float(i < answered),
        }
        for i in range(10)
    ]


def _record(stage: str, epoch: int, step: int, recall: float, nll, acc, tokens) -> dict:
    return {
        "stage": stage,
        "epoch": epoch,
        "step": step,
        "scores": {
            "self_drift": {"nll_increase_rel": float(nll.sum() / BASE_NLL.sum() - 1)},
            "ifeval": {
                "prompt_level_loose_acc": float(acc.mean()),
                "refusal_leak": 0.0,
                "length_ratio": float(tokens.sum() / BASE_TOKENS.sum()),
            },
        },
        "tasks": {"in_domain": {"unanswerable_f1": recall, "answer_recall": recall}},
    }


def _run(
    root: Path,
    name: str,
    method: str,
    seed: int,
    shift: float,
    items: bool = True,
    task_step: int = 0,
    task_items: bool = True,
) -> Path:
    """Task recall 0.5 -> 0.6 (step 10) -> 0.7 (epoch 0, step 20); drift grows by ``shift`` per
    evaluation: NLLs scaled by 1 + shift, IFEval accuracy lowered by ``shift`` on every prompt.
    With ``task_step``, the task scores come from in-domain row items instead (:func:`_task_rows`
    with 2 + ``task_step`` x evaluation rows right), their items written unless not ``task_items``."""
    run = root / name
    run.mkdir(parents=True)
    points = []
    for k, (stage, epoch, step, recall) in enumerate(
        [("base", -1, 0, 0.5), ("step", 0, 10, 0.6), ("epoch", 0, 20, 0.7)]
    ):
        nll, acc, tokens = BASE_NLL * (1 + shift * k), BASE_ACC - shift * k, BASE_TOKENS * (1 - shift * k)
        points.append(_record(stage, epoch, step, recall, nll, acc, tokens))
        tag = {"base": "base", "step": "step_10", "epoch": "epoch_0"}[stage]
        if items:
            _evaluation(run, tag, nll, acc, tokens)
        if task_step:
            rows = _task_rows(2 + task_step * k)
            points[-1]["tasks"]["in_domain"] = aggregate_row_scores(rows).to_dict()
        if task_step and task_items:
            (run / "eval_items" / tag / "tasks.in_domain.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows)
            )
    drift = {"base": points[0], "steps": [points[1]], "epochs": [points[2]]}
    (run / "drift.json").write_text(json.dumps(drift))
    (run / "summary.json").write_text(json.dumps({"method": method, "seed": seed, "lr": 1e-3}))
    return run


def _rows(root: Path):
    runs = find_runs([root])
    curves = run_curves(runs)
    target, rows = matched_rows(method_curves(curves))
    return target, rows, item_level_rows(rows, curves, target)


def test_item_level_values_equal_the_aggregate_interpolation_and_the_ci_covers_the_items(tmp_path):
    for seed in (1, 2, 3):  # identical seeds: a seed-only CI has no width
        _run(tmp_path, f"sft{seed}", "sft", seed, shift=0.2)
        _run(tmp_path, f"ssr{seed}", "ssr", seed, shift=0.05)
    target, rows, items = _rows(tmp_path)
    assert target == pytest.approx(20.0)
    for agg, item in zip(rows, items):
        assert item["value"] == pytest.approx(agg["value"]) and item["values"] == pytest.approx(agg["values"])
        assert item["ci_over"] == "seeds and items" and item["items"] == N
        assert agg["ci"][0] == pytest.approx(agg["ci"][1])  # seeds alone: no spread at all
    by = {(r["method"], r["measure"]): r for r in items}
    # self-drift at the epoch-0 evaluation: sft NLLs x 1.4 -> +0.4; reply length x 0.6
    assert by["sft", "self_drift"]["value"] == pytest.approx(0.4)
    assert by["sft", "reply_length"]["value"] == pytest.approx(0.6)
    lo, hi = by["sft", "ifeval"]["ci"]
    assert lo < by["sft", "ifeval"]["value"] < hi and hi - lo > 0.1  # 40 prompts of 0/1 outcomes


def test_method_differences_pair_the_items(tmp_path):
    """ssr's IFEval accuracy is sft's + 0.3 on every prompt: the paired difference has no item
    variance (a CI of width ~0), though each method's own CI is wide."""
    for seed in (1, 2):
        _run(tmp_path, f"sft{seed}", "sft", seed, shift=0.2)
        _run(tmp_path, f"ssr{seed}", "ssr", seed, shift=0.05)
    _, _, items = _rows(tmp_path)
    diff = {d["measure"]: d for d in matched_differences(items)}
    assert diff["ifeval"]["difference"] == pytest.approx(0.3)
    assert (
        diff["ifeval"]["ci"] == pytest.approx((0.3, 0.3)) and diff["ifeval"]["ci_over"] == "seeds and items"
    )
    own = {(r["method"], r["measure"]): r["ci"] for r in items}
    assert own["sft", "ifeval"][1] - own["sft", "ifeval"][0] > 0.1
    # self-drift, a ratio of sums: sft +0.4, ssr +0.1, on the same prompts
    assert diff["self_drift"]["difference"] == pytest.approx(-0.3)
    assert diff["self_drift"]["ci"] == pytest.approx((-0.3, -0.3)) and diff["self_drift"]["less_drift"]


def test_a_run_without_items_leaves_the_seed_only_ci(tmp_path):
    _run(tmp_path, "sft1", "sft", 1, shift=0.2)
    _run(tmp_path, "sft2", "sft", 2, shift=0.25, items=False)
    _run(tmp_path, "ssr1", "ssr", 1, shift=0.05)
    target, rows, items = _rows(tmp_path)
    assert all(r["ci_over"] == "seeds" and "replicates" not in r for r in items)
    assert [r["value"] for r in items] == [r["value"] for r in rows]
    assert all(d["ci_over"] == "seeds" for d in matched_differences(items))
    table = "\n".join(matched_table(target, items))
    assert "| sft | self_drift |" in table and "| seeds | 2 | - |" in table


def test_resampled_task_rows_move_each_runs_crossing(tmp_path):
    """sft's task curve climbs faster than ssr's, so sft crosses ssr's peak between evaluations.
    Self-drift scales every prompt's NLL alike (no item variance) and the seeds are identical: with
    the crossing held where it was observed the CI has no width; resampling the 20 task rows moves
    sft's crossing, and its CI opens."""
    width = {}
    for task_items in (False, True):
        root = tmp_path / f"task_items_{task_items}"
        for seed in (1, 2, 3):
            _run(root, f"sft{seed}", "sft", seed, shift=0.2, task_step=3, task_items=task_items)
            _run(root, f"ssr{seed}", "ssr", seed, shift=0.05, task_step=2, task_items=task_items)
        _, rows, items = _rows(root)
        for agg, item in zip(rows, items):
            assert item["value"] == pytest.approx(agg["value"]) and item["values"] == pytest.approx(
                agg["values"]
            )
        by = {(r["method"], r["measure"]): r for r in items}
        sft = by["sft", "self_drift"]
        assert sft["ci"][0] - 1e-9 <= sft["value"] <= sft["ci"][1] + 1e-9
        assert 0.2 < sft["value"] < 0.4  # between its step-10 (+0.2) and epoch-0 (+0.4) evaluations
        assert sft["ci_over"] == ("seeds, items, task rows" if task_items else "seeds and items")
        width[task_items] = sft["ci"][1] - sft["ci"][0]
        differences = {d["measure"]: d for d in matched_differences(items)}
        assert differences["self_drift"]["ci_over"] == sft["ci_over"]
    assert width[False] == pytest.approx(0.0, abs=1e-12)
    assert width[True] > 0.05


def test_replicates_without_a_positive_matched_gain_are_left_out(tmp_path):
    """ssr answers only 2 more task rows by its last evaluation: some replicates draw neither
    row, leave it no gain at all and so no matched gain; they are left out and the table says so."""
    for seed in (1, 2):
        _run(tmp_path, f"sft{seed}", "sft", seed, shift=0.2, task_step=3)
        _run(tmp_path, f"ssr{seed}", "ssr", seed, shift=0.05, task_step=1)
    target, _, items = _rows(tmp_path)
    assert 0 < items[0]["dropped"] < 0.1
    assert all(np.isfinite(r["ci"]).all() for r in items)
    assert "of the bootstrap replicates the resampled task rows leave no positive gain" in "\n".join(
        matched_table(target, items)
    )
