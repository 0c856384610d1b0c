"""ssr-report: numbers in the table and plots come from the run files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssr.cli.report import main as report_main
from ssr.report.runs import find_runs, relative_change
from ssr.report.tables import cost_table, table


def _run(root: Path, method: str, seed: int, arc: list[float], una_f1: float, drift: float) -> None:
    d = root / f"{method}-{seed}"
    d.mkdir(parents=True)
    sel = {
        "by_source": {"self": 0.4 if method == "ssr" else 0.0, "gold": 0.6 if method == "ssr" else 1.0},
        "by_source_answerable": {},
        "by_source_unanswerable": {},
    }
    (d / "summary.json").write_text(json.dumps({"method": method, "seed": seed, "selection": sel}))
    (d / "eval.json").write_text(
        json.dumps(
            {
                "base": {"tasks": {"in_domain": {"unanswerable_f1": 0.5, "answer_recall": 0.3}}},
                "final": {"tasks": {"in_domain": {"unanswerable_f1": una_f1, "answer_recall": 0.4}}},
            }
        )
    )
    epochs = [
        {
            "epoch": i,
            "scores": {
                "ssr_arc_easy": {"acc": a, "acc_norm": a / 2},
                "self_drift": {"nll_increase_rel": drift * (i + 1)},
            },
        }
        for i, a in enumerate(arc)
    ]
    (d / "drift.json").write_text(
        json.dumps(
            {
                "base": {
                    "scores": {
                        "ssr_arc_easy": {"acc": 0.60, "acc_norm": 0.30},
                        "self_drift": {"nll_increase_rel": 0.0},
                    }
                },
                "epochs": epochs,
            }
        )
    )


def test_table_aggregates_seeds_and_relative_change(tmp_path):
    _run(tmp_path, "sft", 1, [0.58, 0.54], 0.70, 0.05)
    _run(tmp_path, "sft", 2, [0.56, 0.50], 0.72, 0.06)
    _run(tmp_path, "ssr", 1, [0.60, 0.59], 0.68, -0.02)
    runs = find_runs([tmp_path])
    assert {(r.method, r.seed) for r in runs} == {("sft", 1), ("sft", 2), ("ssr", 1)}
    md = table(runs)
    lines = md.splitlines()
    assert "ssr_arc_easy/acc" in lines[0] and "in_domain/unanswerable_f1" in lines[0]
    sft = next(line for line in lines if line.startswith("| sft"))
    assert "52.0 ± 2.8" in sft  # final-epoch arc acc 0.54, 0.50
    assert "71.0 ± 1.4" in sft  # unanswerable F1 0.70, 0.72
    assert sft.endswith("| -8.0 ± 2.8 | -13.3 ± 4.7 |")  # avg change: points, relative (arc only)
    ssr_run = next(r for r in runs if r.method == "ssr")
    assert relative_change(ssr_run, ["suite/ssr_arc_easy/acc"]) == pytest.approx((0.59 - 0.60) / 0.60)


def test_cli_writes_markdown_and_plots(tmp_path):
    _run(tmp_path / "runs", "sft", 1, [0.58, 0.54], 0.7, 0.05)
    _run(tmp_path / "runs", "ssr", 1, [0.60, 0.59], 0.7, 0.01)
    report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| ssr | 1 |" in md and "## Selection statistics" in md
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert {"drift_ssr_arc_easy_acc.png", "drift_summary.png"} <= set(pngs)
    assert all((tmp_path / "out" / p).stat().st_size > 1000 for p in pngs)
    # change vs base in points: sft final arc acc 0.54 vs base 0.60
    deltas = md.split("## Change vs base")[1].split("##")[0]
    assert "| sft | 1 | 20.0 | 10.0 | 10.0 | -6.0 |" in deltas  # una F1, recall, self-drift, arc
    # runs.json holds the same numbers and reads back into the same table
    again = find_runs([tmp_path / "out" / "runs.json"])
    assert table(again) == table(find_runs([tmp_path / "runs"]))


def test_cost_table_reads_drift_seconds(tmp_path):
    _run(tmp_path, "sft", 1, [0.58, 0.54], 0.7, 0.05)
    drift = json.loads((tmp_path / "sft-1" / "drift.json").read_text())
    for e in drift["epochs"]:
        e["seconds"] = {"eval": 42.0, "drift": 30.0, "ifeval": 12.0, "epoch": 200.0}
    drift["epochs"][-1]["seconds"].update(eval=90.0, tasks=60.0)
    (tmp_path / "sft-1" / "drift.json").write_text(json.dumps(drift))
    (tmp_path / "sft-1" / "summary.json").write_text(json.dumps({"method": "sft", "seed": 1, "wall_s": 900}))
    assert "| sft | 1 | 900 | 200 | 30 | 15% | 12 | 60 | – | – |" in cost_table(find_runs([tmp_path]))


def test_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run directories"):
        report_main([str(tmp_path)])


def test_groups_stand_for_their_subtasks_and_answerable_only_sets_show_answered_share(tmp_path):
    _run(tmp_path, "sft", 1, [0.58, 0.54], 0.7, 0.05)
    for name in ("drift.json", "eval.json"):
        payload = json.loads((tmp_path / "sft-1" / name).read_text())
        if name == "drift.json":
            for rec in [payload["base"], *payload["epochs"]]:
                rec["scores"].update({"ssr_mmlu": {"acc": 0.3}, "ssr_mmlu_nutrition": {"acc": 0.2}})
        else:
            for part in ("base", "final"):
                payload[part]["tasks"]["ood_nq"] = {"n_unanswerable": 0, "unanswerable_accuracy": 0.8}
        (tmp_path / "sft-1" / name).write_text(json.dumps(payload))
    header = table(find_runs([tmp_path])).splitlines()[0]
    assert "ssr_mmlu/acc" in header and "ssr_mmlu_nutrition" not in header
    assert "ood_nq/unanswerable_accuracy" in header and "ood_nq/unanswerable_f1" not in header
    assert "in_domain/unanswerable_f1" in header


def test_task_breakdown_shows_three_numbers_that_cannot_hide_each_other(tmp_path):
    from ssr.report.tables import task_breakdown_table

    _run(tmp_path, "sft", 1, [0.58, 0.54], 0.7, 0.05)
    payload = json.loads((tmp_path / "sft-1" / "eval.json").read_text())
    payload["base"]["tasks"]["in_domain"].update(over_refusal=0.1, answered_recall=0.33)
    # refusing most answerable rows: a high F1 and a high recall where it still answers
    payload["final"]["tasks"]["in_domain"].update(over_refusal=0.75, answered_recall=0.9)
    payload["final"]["tasks"]["ood_nq"] = {
        "n_unanswerable": 0,
        "unanswerable_accuracy": 0.2,
        "answer_recall": 0.1,
    }
    payload["base"]["tasks"]["ood_nq"] = {
        "n_unanswerable": 0,
        "unanswerable_accuracy": 0.8,
        "answer_recall": 0.5,
    }
    for part in ("base", "final"):
        payload[part]["tasks"]["ood_nq"]["over_refusal"] = (
            1 - payload[part]["tasks"]["ood_nq"]["unanswerable_accuracy"]
        )
    (tmp_path / "sft-1" / "eval.json").write_text(json.dumps(payload))
    lines = task_breakdown_table(find_runs([tmp_path])).splitlines()
    assert "| in_domain | base | 1 | 50.0 | 90.0 | 33.0 | 40.0 |" in lines
    assert "| in_domain | sft | 1 | 70.0 | 25.0 | 90.0 | 55.0 |" in lines  # combined: (0.7 + 0.4) / 2
    assert "| ood_nq | sft | 1 | – | 20.0 | – | 15.0 |" in lines  # answerable only: no F1
