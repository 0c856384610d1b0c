"""Forgetting along training in ssr-report: curves from drift.json and drift at matched task gain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssr.report.curves import (
    curve,
    drift_at_gain,
    matched_differences,
    matched_groups,
    matched_rows,
    method_curves,
)
from ssr.report.runs import find_runs
from ssr.report.write import write_report


def _record(stage: str, step: int, recall: float, drift: float) -> dict:
    return {
        "stage": stage,
        "epoch": 0,
        "step": step,
        "scores": {"self_drift": {"nll_increase_rel": drift}, "ssr_arc_easy": {"acc": 0.5 - drift / 10}},
        "tasks": {
            # every task-metric key: only unanswerable F1 and answer recall make the task score
            "in_domain": {
                "n": 32,
                "n_unanswerable": 16,
                "unanswerable_f1": recall,
                "answer_recall": recall,
                "over_refusal": drift,
                "unanswerable_recall": 1.0,
            },
            "ood_nq": {"n_unanswerable": 0, "over_refusal": drift, "unanswerable_accuracy": 1 - drift},
        },
    }


def _run(root: Path, name: str, method: str, seed: int, path: list[tuple[int, float, float]]) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (step0, r0, d0), *rest = path
    records = [_record("step" if i < len(rest) - 1 else "epoch", *p) for i, p in enumerate(rest)]
    drift = {
        "base": _record("base", step0, r0, d0),
        "steps": [r for r in records if r["stage"] == "step"],
        "epochs": [r for r in records if r["stage"] == "epoch"],
    }
    (run / "drift.json").write_text(json.dumps(drift))
    (run / "summary.json").write_text(json.dumps({"method": method, "seed": seed, "lr": 1e-3}))
    return run


def test_curves_and_drift_at_matched_task_gain(tmp_path):
    # sft gains 20 points by step 20 while drift climbs to 0.4; ssr gains 10 by step 20, drift 0.05
    sft = _run(tmp_path, "sft", "sft", 1, [(0, 0.5, 0.0), (10, 0.6, 0.2), (20, 0.7, 0.4)])
    _run(tmp_path, "ssr", "ssr", 1, [(0, 0.5, 0.0), (10, 0.55, 0.02), (20, 0.6, 0.05)])
    points = curve(sft)
    assert [p["step"] for p in points] == [0, 10, 20]
    assert [round(p["task_gain"], 6) for p in points] == [0.0, 10.0, 20.0]
    # along the curve too: out-of-domain over-refusal and the multiple-choice mean
    assert [p["tasks/ood/over_refusal"] for p in points] == pytest.approx([0.0, 0.2, 0.4])
    assert [p["suite/mc/mean"] for p in points] == pytest.approx([0.5, 0.48, 0.46])
    # 5 points of gain: halfway from the base to step 10 for sft (drift 0.1), step 10 for ssr
    assert drift_at_gain(points, 5.0, "suite/self_drift/nll_increase_rel") == pytest.approx(0.1)
    assert drift_at_gain(points, 25.0, "suite/self_drift/nll_increase_rel") is None  # never reached
    runs = find_runs([tmp_path])
    target, rows = matched_rows(method_curves(runs))
    assert target == pytest.approx(10.0)  # the smallest peak: ssr's
    by = {(r["method"], r["measure"]): r["value"] for r in rows}
    assert by["sft", "self_drift"] == pytest.approx(0.2) and by["ssr", "self_drift"] == pytest.approx(0.05)
    assert by["sft", "ood_over_refusal"] == pytest.approx(0.2) and by["ssr", "mc_mean"] == pytest.approx(
        0.495
    )
    report = write_report([tmp_path], tmp_path / "report").read_text()
    assert "## Forgetting along training" in report and "+10.0 points" in report
    # ssr - sft at that gain, one run a side: the permutation test cannot reject (p = 1)
    assert "| ssr | self_drift | -0.150 | [-0.150, -0.150] | seeds | 1 | 1 vs 1 | yes |" in report
    assert "| ssr | mc_mean | +0.015 |" in report
    assert (tmp_path / "report" / "curves.png").is_file()


def test_no_matched_gain_when_a_method_never_gains(tmp_path):
    _run(tmp_path, "sft", "sft", 1, [(0, 0.5, 0.0), (10, 0.6, 0.2), (20, 0.7, 0.4)])
    _run(tmp_path, "ssr", "ssr", 1, [(0, 0.5, 0.0), (10, 0.4, 0.02), (20, 0.45, 0.05)])
    target, rows = matched_rows(method_curves(find_runs([tmp_path])))
    assert target is None and rows == []


def test_matched_gain_differences_come_with_seed_level_ci_and_permutation_p(tmp_path):
    """Three seeds a side, sft drifting far more at every seed: the permutation test's floor
    (2 of 20 splits) is reached and the bootstrap CI excludes 0."""
    for seed, (d_sft, d_ssr) in enumerate([(0.4, 0.02), (0.5, 0.03), (0.45, 0.01)], start=1):
        _run(tmp_path, f"sft{seed}", "sft", seed, [(0, 0.5, 0.0), (10, 0.6, d_sft), (20, 0.7, 2 * d_sft)])
        _run(tmp_path, f"ssr{seed}", "ssr", seed, [(0, 0.5, 0.0), (10, 0.6, d_ssr), (20, 0.7, 2 * d_ssr)])
    target, rows = matched_rows(method_curves(find_runs([tmp_path])))
    assert target == pytest.approx(20.0)
    diff = {d["measure"]: d for d in matched_differences(rows)}["self_drift"]
    assert diff["difference"] == pytest.approx(2 * (0.02 - 0.45))
    assert diff["p"] == pytest.approx(0.1) and diff["runs"] == (3, 3) and diff["less_drift"]
    assert diff["ci"][1] < 0
    mc = {d["measure"]: d for d in matched_differences(rows)}["mc_mean"]
    assert mc["less_drift"] and mc["difference"] > 0  # higher is better there


def test_reply_length_drifts_less_the_nearer_its_ratio_is_to_one():
    rows = [
        {"method": "sft", "measure": "reply_length", "value": 0.2, "values": [0.2]},
        {"method": "ssr", "measure": "reply_length", "value": 0.9, "values": [0.9]},
        {"method": "dft", "measure": "reply_length", "value": 1.9, "values": [1.9]},  # replies doubled
    ]
    less = {d["method"]: d["less_drift"] for d in matched_differences(rows)}
    assert less == {"ssr": True, "dft": False}


def test_each_method_meets_sft_at_the_largest_gain_the_two_reach(tmp_path):
    """A third method that gains 2 points does not pull the sft-vs-ssr comparison down to 2: each
    method is matched with sft on its own (sft vs ssr at +10, sft vs dft at +2)."""
    _run(tmp_path, "sft", "sft", 1, [(0, 0.5, 0.0), (10, 0.6, 0.2), (20, 0.7, 0.4)])
    _run(tmp_path, "ssr", "ssr", 1, [(0, 0.5, 0.0), (10, 0.55, 0.02), (20, 0.6, 0.05)])
    _run(tmp_path, "dft", "dft", 1, [(0, 0.5, 0.0), (10, 0.52, 0.3), (20, 0.51, 0.6)])
    curves = method_curves(find_runs([tmp_path]))
    assert matched_groups(curves) == [["sft", "dft"], ["sft", "ssr"]]
    assert matched_rows(curves)[0] == pytest.approx(2.0)  # all together: dft's peak
    report = write_report([tmp_path], tmp_path / "report").read_text()
    assert "### sft vs ssr\n\nMatched gain: **+10.0 points**." in report
    assert "### sft vs dft\n\nMatched gain: **+2.0 points**." in report
    # sft at +10 (step 10): drift 0.2; at +2: a fifth of the way to step 10, 0.04
    assert "| sft | self_drift | 0.200 |" in report and "| sft | self_drift | 0.040 |" in report
    assert "| ssr | self_drift | -0.150 | [-0.150, -0.150] | seeds | 1 | 1 vs 1 | yes |" in report
