"""ssr-report's per-item statistics, lr choice and Pareto plot on hand-built run directories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ssr.cli.report import main as report_main
from ssr.eval.items import ItemSink
from ssr.report.grid import choose_lr
from ssr.report.paired import change_rows, coverage, difference_rows, measures
from ssr.report.pareto import pareto_points
from ssr.report.runs import find_runs, task_keys

BASE_ARC = [1.0] * 12 + [0.0] * 8  # 20 documents, 12 right


def _run(
    root: Path,
    method: str,
    seed: int,
    lr: float,
    arc: list[float],
    recall: float,
    nll: float,
    final_arc: list[float] | None = None,
) -> Path:
    """A run whose final arc answers are ``arc`` (per document) and in-domain recall ``recall``;
    with ``final_arc``, also an ``eval.final`` evaluation (40 documents: base = BASE_ARC twice)."""
    d = root / f"{method}-{lr}-{seed}"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"method": method, "seed": seed, "lr": lr}))
    tasks = {
        "base": {"answer_recall": 0.3, "unanswerable_f1": 0.5},
        "final": {"answer_recall": recall, "unanswerable_f1": 0.5},
    }
    (d / "eval.json").write_text(json.dumps({k: {"tasks": {"in_domain": v}} for k, v in tasks.items()}))

    def scores(acc, rel):
        return {
            "ssr_arc_easy": {"acc": sum(acc) / len(acc)},
            "self_drift": {"nll_increase_rel": rel},
        }

    (d / "drift.json").write_text(
        json.dumps(
            {
                "base": {"scores": scores(BASE_ARC, 0.0)},
                "epochs": [{"epoch": 0, "scores": scores(arc, nll - 1)}],
                **(
                    {
                        "final": {
                            "base": {"scores": scores(2 * BASE_ARC, 0.0)},
                            "model": {"scores": scores(final_arc, 0.0)},
                        }
                    }
                    if final_arc
                    else {}
                ),
            }
        )
    )
    if final_arc:
        for tag, acc in (("final_base", 2 * BASE_ARC), ("final", final_arc)):
            ItemSink(d / "eval_items", tag).write(
                "lm_eval.ssr_arc_easy", [{"id": str(i), "acc": a} for i, a in enumerate(acc)]
            )
    for tag, acc, prompt_nll in (("base", BASE_ARC, 1.0), ("epoch_0", arc, nll)):
        sink = ItemSink(d / "eval_items", tag)
        sink.write("lm_eval.ssr_arc_easy", [{"id": str(i), "acc": a} for i, a in enumerate(acc)])
        sink.write(
            "self_drift",
            [
                {"id": f"p{i}", "nll": prompt_nll, "nll_sum": 10 * prompt_nll, "n_tokens": 10}
                for i in range(4)
            ],
        )
    return d


def _sweep(root: Path) -> None:
    # sft: 6 of the 12 right answers lost (McNemar 6 vs 0 discordant); at lr 1e-3 a better task score
    sft_arc = [1.0] * 6 + [0.0] * 14
    _run(root, "sft", 1, 1e-4, sft_arc, 0.4, 1.5)
    _run(root, "sft", 1, 1e-3, sft_arc, 0.6, 2.0)
    # ssr: one right answer lost, one wrong answer fixed
    ssr_arc = [1.0] * 11 + [0.0, 1.0] + [0.0] * 7
    _run(root, "ssr", 1, 1e-4, ssr_arc, 0.5, 1.1)


def test_lr_is_chosen_on_the_task_score_and_stats_are_paired(tmp_path):
    _sweep(tmp_path)
    runs = find_runs([tmp_path])
    keys = task_keys(runs)
    assert choose_lr(runs, keys) == {"sft": 1e-3, "ssr": 1e-4}  # recall 0.6 > 0.4, drift ignored
    chosen = [r for r in runs if (r.method, r.lr) in {("sft", 1e-3), ("ssr", 1e-4)}]
    groups = {
        "sft": [r for r in chosen if r.method == "sft"],
        "ssr": [r for r in chosen if r.method == "ssr"],
    }
    bench = ["suite/ssr_arc_easy/acc", "suite/self_drift/nll_increase_rel"]
    assert [m.name for m in measures(chosen, bench)] == [
        "ssr_arc_easy/acc",
        "self_drift/nll",
        "self_drift/stop_prob",
    ]
    rows = {(r.group, r.measure.name): r for r in change_rows(groups, coverage(chosen, bench))}
    sft_arc = rows["sft", "ssr_arc_easy/acc"].estimate
    # 6 discordant pairs, all one way: two-sided exact p = 2 / 2^6
    assert sft_arc.mean == pytest.approx(-0.3) and sft_arc.p_value == pytest.approx(2 / 64)
    assert sft_arc.test == "mcnemar" and sft_arc.n_items == 20 and sft_arc.hi < 0
    assert rows["ssr", "ssr_arc_easy/acc"].estimate.p_value == pytest.approx(1.0)  # 1 vs 1
    assert rows["sft", "self_drift/nll"].estimate.mean == pytest.approx(1.0)
    diff = {r.measure.name: r for r in difference_rows(groups, "sft", coverage(chosen, bench))}
    # ssr - sft on arc: +0.3; ssr right where sft is wrong on 6 docs, never the reverse
    assert diff["ssr_arc_easy/acc"].estimate.mean == pytest.approx(0.3)
    assert diff["ssr_arc_easy/acc"].estimate.p_value == pytest.approx(2 / 64)
    assert diff["ssr_arc_easy/acc"].mdd > 0
    points = pareto_points(runs, keys, bench)
    assert [(p["method"], p["lr"], p["chosen"]) for p in points] == [
        ("sft", 1e-4, False),
        ("sft", 1e-3, True),
        ("ssr", 1e-4, True),
    ]
    # task gain: mean of (una F1, recall) change vs base, in points
    assert points[1]["task_gain"] == pytest.approx(100 * (0.6 - 0.3) / 2)
    assert points[1]["benchmark_change"] == pytest.approx(-30.0)


def test_report_has_the_item_sections_and_the_pareto_plot(tmp_path):
    _sweep(tmp_path / "runs")
    report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    paired = md.split("## Paired change vs base")[1].split("\n## ")[0]
    assert "| sft | ssr_arc_easy/acc | 20 | 1 | -30.0 * | [" in paired
    assert "| mcnemar |" in paired and "MDD" in paired and "| p | q (BH) | test |" in paired
    cells = [line.split(" | ") for line in paired.splitlines() if line.startswith("| s")]
    p_q = [(float(c[6]), float(c[7])) for c in cells]  # each q at least its p, at most 1
    assert all(c[9] == f"{c[6]} ({c[8]})" for c in cells)  # one seed a side: the item test is the p
    assert len(p_q) >= 4 and all(p <= q <= 1 for p, q in p_q) and any(p < q for p, q in p_q)
    assert "## Method − SFT" in md and "| ssr | ssr_arc_easy/acc | 20 | 1 | +30.0 * |" in md
    assert "more at other learning rates" in md
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 1000
    stats = json.loads((tmp_path / "out" / "item_stats.json").read_text())
    assert stats["chosen_lr"] == {"sft": 1e-3, "ssr": 1e-4} and len(stats["pareto"]) == 3
    # the main table only holds the chosen lr: one sft run
    assert "| sft | 1 |" in md.split("## Change vs base")[0]


def test_runs_without_item_files_get_a_note(tmp_path):
    d = _run(tmp_path / "runs", "sft", 1, 1e-4, BASE_ARC, 0.4, 1.0)
    for f in (d / "eval_items").rglob("*.jsonl"):
        f.unlink()
    report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert "No run has per-item results" in (tmp_path / "out" / "results.md").read_text()


def test_grid_chooses_the_lr_and_the_seeds_report_their_final_evaluation(tmp_path):
    """--grid: lr chosen on a one-seed grid; the seed runs (eval.final, 40 docs) fill the tables."""
    _sweep(tmp_path / "grid")
    sft_final = [1.0] * 6 + [0.0] * 14 + BASE_ARC  # 6 of 24 right answers lost
    for seed in (1, 2):
        _run(tmp_path / "seeds", "sft", seed, 1e-3, [1.0] * 6 + [0.0] * 14, 0.6, 2.0, final_arc=sft_final)
        _run(tmp_path / "seeds", "ssr", seed, 1e-4, BASE_ARC, 0.5, 1.1, final_arc=2 * BASE_ARC)
    out = tmp_path / "out"
    report_main([str(tmp_path / "seeds"), "--grid", str(tmp_path / "grid"), "--out", str(out)])
    md = (out / "results.md").read_text()
    assert "the learning rates chosen on 3 grid runs" in md and "`eval.final` evaluation" in md
    paired = md.split("## Paired change vs base")[1].split("\n## ")[0]
    assert "| sft | ssr_arc_easy/acc | 40 | 2 | -15.0 * |" in paired  # the final pair, both seeds
    assert "| ssr | ssr_arc_easy/acc | 40 | 2 | +0.0 |" in paired
    stats = json.loads((out / "item_stats.json").read_text())
    assert stats["chosen_lr"] == {"sft": 1e-3, "ssr": 1e-4}
    assert len(stats["pareto"]) == 3 and [p["seeds"] for p in stats["pareto_final"]] == [2, 2]
    assert (out / "pareto.png").is_file() and (out / "pareto_final.png").is_file()
    assert len(json.loads((out / "grid_runs.json").read_text())["runs"]) == 3
    assert len(json.loads((out / "runs.json").read_text())["runs"]) == 4
    # the table's benchmark column is the final evaluation's (sft: 18/40)
    assert "| sft | 2 | " in md and "45.0" in md.split("## Change vs base")[0]
    # a seed run at another lr than the grid chose is an error naming it
    _run(tmp_path / "seeds", "ssr", 3, 1e-3, BASE_ARC, 0.5, 1.1)
    with pytest.raises(ValueError, match=r"ssr-0.001-3 \(ssr, lr 0.001 vs 0.0001\)"):
        report_main([str(tmp_path / "seeds"), "--grid", str(tmp_path / "grid"), "--out", str(out)])


def test_pareto_front_per_drift_measure():
    from ssr.report.pareto import on_front

    points = [
        {"task_gain": 10.0, "benchmark_change": -5.0, "self_drift": 40.0, "kl_task": 0.3},
        {"task_gain": 8.0, "benchmark_change": -1.0, "self_drift": -5.0, "kl_task": 0.05},
        {"task_gain": 7.0, "benchmark_change": -2.0, "self_drift": 1.0, "kl_task": 0.01},
        {"task_gain": None, "benchmark_change": 0.0, "self_drift": 0.0, "kl_task": 0.0},
    ]
    front = {
        k: [i for i, p in enumerate(points) if on_front(p, points, k)] for k in points[0] if k != "task_gain"
    }
    assert front == {"benchmark_change": [0, 1], "self_drift": [0, 1], "kl_task": [0, 1, 2]}


def test_ood_answerable_only_scores_every_answerable_out_of_domain_row():
    """eval.final.tasks' over-refusal sets: each data.ood set's answerable rows alone, all of them
    with no cap, under a name of their own (not the per-epoch balanced ood_<name>)."""
    from ssr.data.records import Record
    from ssr.eval.task_sets import TaskMetricsConfig, task_sets

    quac = [Record(id=f"q{i}", question="?", gold="g", answerable=i % 4 != 0) for i in range(40)]
    nq = [Record(id=f"n{i}", question="?", gold="g") for i in range(25)]
    ood = {"quac": quac, "nq": nq}
    per_epoch = task_sets(TaskMetricsConfig(max_rows=8), [], ood)
    assert set(per_epoch) == {"ood_quac", "ood_nq"} and len(per_epoch["ood_quac"]) == 8
    every = task_sets(TaskMetricsConfig(in_domain=False, max_rows=None, ood_answerable_only=True), [], ood)
    assert set(every) == {"ood_quac_answerable", "ood_nq_answerable"}
    assert sorted(r.id for r in every["ood_quac_answerable"]) == sorted(r.id for r in quac if r.answerable)
    assert len(every["ood_nq_answerable"]) == 25
    capped = task_sets(TaskMetricsConfig(max_rows=None, ood_max_rows=6, ood_answerable_only=True), [], ood)
    assert len(capped["ood_quac_answerable"]) == 6 and all(
        r.answerable for r in capped["ood_quac_answerable"]
    )


def test_the_lr_is_chosen_on_validation_rows_disjoint_from_the_reported_test_rows():
    from ssr.data.records import Record
    from ssr.eval.task_sets import TaskMetricsConfig, task_sets
    from ssr.report.grid import report_keys, selection_keys

    val = [Record(id=f"v{i}", question="?", gold="g", answerable=i % 2 == 0) for i in range(20)]
    sets = task_sets(TaskMetricsConfig(max_rows=8, selection_rows=6), val, {})
    test_ids, val_ids = {r.id for r in sets["in_domain"]}, {r.id for r in sets["in_domain_val"]}
    assert len(test_ids) == 8 and len(val_ids) == 6 and not test_ids & val_ids
    assert sum(not r.answerable for r in sets["in_domain_val"]) == 3  # balanced
    assert sets["in_domain"] == task_sets(TaskMetricsConfig(max_rows=8), val, {})["in_domain"]  # unchanged
    with pytest.raises(ValueError, match="selection_rows=20: only 12 validation rows"):
        task_sets(TaskMetricsConfig(max_rows=8, selection_rows=20), val, {})
    keys = [
        "tasks/in_domain/answer_recall",
        "tasks/in_domain_val/answer_recall",
        "tasks/ood_nq/answer_recall",
    ]
    assert selection_keys(keys) == ["tasks/in_domain_val/answer_recall"]
    assert report_keys(keys) == ["tasks/in_domain/answer_recall"]
    assert selection_keys(keys[:1]) == keys[:1]  # older runs: chosen on the reported rows


def test_a_final_only_task_set_in_some_runs_counts_only_those_runs(tmp_path):
    """While ``ssr-eval +run=`` has added the over-refusal sets to some runs only: the set is
    answerable-only (its runs say so) and the task breakdown counts the runs that have it."""
    from ssr.report.runs import Run, answerable_only, task_keys
    from ssr.report.tables import task_breakdown_table

    def run(seed, with_set):
        extra = {"tasks/ood_nq_answerable/n_unanswerable": 0.0, "tasks/ood_nq_answerable/over_refusal": 0.4}
        base = {"tasks/in_domain/n_unanswerable": 8.0, **(extra if with_set else {})}
        final = {"tasks/in_domain/unanswerable_f1": 0.9, **(extra if with_set else {})}
        return Run(path=tmp_path / str(seed), method="sft", seed=seed, selection=None, base=base, final=final)

    runs = [run(1, True), run(2, False), run(3, False)]
    assert answerable_only([r.base for r in runs])("ood_nq_answerable")
    assert not answerable_only([r.base for r in runs])("in_domain")
    assert not answerable_only([r.base for r in runs])("ood_missing")
    assert "tasks/ood_nq_answerable/unanswerable_accuracy" in task_keys(runs)
    table = task_breakdown_table(runs)
    assert "| ood_nq_answerable | sft | 1 | – | 60.0 |" in table and "| in_domain | sft | 3 |" in table


def _bare_run(root: Path, method: str, seed: int) -> Path:
    """A run directory with a summary and an empty drift record (items are the test's to write)."""
    d = root / f"{method}{seed}"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"method": method, "seed": seed, "lr": 1e-3}))
    (d / "drift.json").write_text(
        json.dumps({"base": {"scores": {}}, "epochs": [{"epoch": 0, "scores": {}}]})
    )
    return d


def test_the_declines_are_split_by_what_the_base_did_on_each_row(tmp_path):
    """ssr declines exactly where the base did (plus one row); sft declines half of each kind:
    the split tells rehearsed refusals from a new habit. Unanswerable rows (no over_refusal) and
    the report's section and item_stats entry come along."""
    from ssr.report.paired import coverage, refusal_split_rows
    from ssr.report.write import write_report

    base = [1.0] * 4 + [0.0] * 6
    finals = {
        ("ssr", 1): [1.0] * 5 + [0.0] * 5,
        ("ssr", 2): [1.0] * 4 + [0.0] * 6,
        ("sft", 1): [0, 0, 1, 1, 1, 1, 1, 0, 0, 0],
    }
    for (method, seed), final in finals.items():
        d = _bare_run(tmp_path / "runs", method, seed)
        for tag, values in (("base", base), ("epoch_0", final)):
            rows = [
                {"id": str(i), "answerable": True, "over_refusal": float(v)} for i, v in enumerate(values)
            ]
            rows.append({"id": "u", "answerable": False, "over_refusal": None})
            ItemSink(d / "eval_items", tag).write("tasks.ood_nq", rows)
    runs = find_runs([tmp_path / "runs"])
    groups = {m: [r for r in runs if r.method == m] for m in ("sft", "ssr")}
    split = {r["group"]: r for r in refusal_split_rows(groups, coverage(runs, []))}
    assert (
        split["ssr"]["n_items"] == 10 and split["ssr"]["seeds"] == 2 and split["ssr"]["base_declined"] == 0.4
    )
    assert split["ssr"]["where_base_declined"] == 1.0
    assert split["ssr"]["where_base_answered"] == pytest.approx(1 / 12)  # one row of six, one seed of two
    assert split["sft"]["where_base_declined"] == 0.5 and split["sft"]["where_base_answered"] == 0.5
    assert split["sft"]["declined"] == 0.5
    assert split["ssr"]["gap_ci"][0] > 0.5 and split["sft"]["gap_ci"][0] < 0 < split["sft"]["gap_ci"][1]
    md = write_report([tmp_path / "runs"], tmp_path / "out").read_text()
    assert (
        "## Where the declines fall" in md
        and "| ssr | ood_nq | 10 | 2 | 40.0 | 45.0 | 100.0 | 8.3 | +91.7 [" in md
    )
    stats = json.loads((tmp_path / "out" / "item_stats.json").read_text())
    assert {r["group"] for r in stats["refusal_split"]} == {"sft", "ssr"}


def test_the_declines_read_as_the_tasks_sentence_or_a_piece_of_it(tmp_path):
    """The decline table pools a method's seeds, reads the configured sentence from each run's
    config, and names the commonest declining reply: an sdft-like model that answers general
    instructions with the sentence cut short shows 0% whole and that cut as its commonest reply."""
    from ssr.report.declines import decline_rows
    from ssr.report.write import write_report

    sentence = "I cannot answer this question based on the provided document."
    cut = "I cannot answer this question."
    replies = {
        ("sft", 1): (["ok"] * 3 + [cut], [sentence, "Paris", "Paris", "Paris"]),
        ("sdft", 1): ([cut, cut, "Sure | here", "ok"], [sentence, sentence, "Rome", "Paris"]),
        ("sdft", 2): ([cut, "I cannot write a poem.", "ok", "ok"], ["Paris"] * 4),
    }
    for (method, seed), (ifeval, answers) in replies.items():
        d = _bare_run(tmp_path / "runs", method, seed)
        (d / ".hydra").mkdir()
        (d / ".hydra" / "config.yaml").write_text(f"prompt:\n  unanswerable_sentence: {sentence}\n")
        for tag, ifeval_replies, task_replies in (
            ("base", ["ok"] * 4, ["Paris"] * 3 + ["The document does not say."]),
            ("epoch_0", ifeval, answers),
        ):
            sink = ItemSink(d / "eval_items", tag)
            sink.write(
                "ifeval",
                [
                    {"id": str(i), "refused": float("cannot" in r), "response": r}
                    for i, r in enumerate(ifeval_replies)
                ],
            )
            rows = [
                {"id": str(i), "prediction": r, "over_refusal": float("Paris" not in r and "Rome" not in r)}
                for i, r in enumerate(task_replies)
            ]
            rows.append({"id": "u", "prediction": sentence, "answerable": False, "over_refusal": None})
            sink.write("tasks.ood_nq_answerable", rows)
    runs = find_runs([tmp_path / "runs"])
    groups = {m: [r for r in runs if r.method == m] for m in ("sft", "sdft")}
    rows = {(r["source"], r["group"]): r for r in decline_rows(groups)}
    assert [k for k in rows] == [
        (s, g) for s in ("ifeval", "ood_nq_answerable") for g in ("base", "sft", "sdft")
    ]
    sdft = rows["ifeval", "sdft"]
    assert (sdft["seeds"], sdft["replies"], sdft["declined"]) == (2, 8, 0.5)
    assert sdft["whole_sentence"] == 0.0 and sdft["top_decline"] == cut and sdft["top_share"] == 0.75
    assert rows["ifeval", "base"]["declined"] == 0.0 and rows["ifeval", "base"]["top_decline"] is None
    assert rows["ood_nq_answerable", "sdft"]["declined"] == 0.25  # the unanswerable row is not counted
    assert rows["ood_nq_answerable", "sdft"]["whole_sentence"] == 1.0
    assert rows["ood_nq_answerable", "base"]["whole_sentence"] == 0.0
    assert rows["ood_nq_answerable", "base"]["top_decline"] == "The document does not say."
    md = write_report([tmp_path / "runs"], tmp_path / "out").read_text()
    assert "## How the declines read" in md
    assert f"| ifeval | sdft | 2 | 8 | 50.0 | 0.0 | `{cut}` | 75.0 |" in md
    assert "| ood_nq_answerable | sft | 1 | 4 | 25.0 | 100.0 |" in md
    stats = json.loads((tmp_path / "out" / "item_stats.json").read_text())
    assert {r["group"] for r in stats["declines"]} == {"base", "sft", "sdft"}


def test_a_run_without_a_measures_items_is_left_out_of_that_measure_only(tmp_path, caplog):
    """A third ssr seed whose evaluation lacks the over-refusal set (its scores still to come) is
    left out of that measure, with one warning; the two seeds that have it keep the measure in the
    change, method - SFT, declines-split and decline tables, and it stays in the measure it has."""
    from ssr.report.declines import decline_rows
    from ssr.report.paired import coverage, refusal_split_rows

    base = [1.0] * 4 + [0.0] * 6
    finals = {("ssr", 1): [1.0] * 5 + [0.0] * 5, ("ssr", 2): base, ("sft", 1): [0.0] * 10, ("ssr", 3): None}
    for (method, seed), final in finals.items():
        d = _bare_run(tmp_path / "runs", method, seed)
        for tag, values in (("base", base), ("epoch_0", final)):
            sink = ItemSink(d / "eval_items", tag)
            sink.write("ifeval", [{"id": str(i), "refused": 0.0, "response": "ok"} for i in range(3)])
            if values is not None:
                rows = [
                    {"id": str(i), "over_refusal": float(v), "prediction": "no" if v else "yes"}
                    for i, v in enumerate(values)
                ]
                sink.write("tasks.ood_nq", rows)
    runs = find_runs([tmp_path / "runs"])
    groups = {m: [r for r in runs if r.method == m] for m in ("sft", "ssr")}
    with caplog.at_level("WARNING", logger="ssr.report.paired"):
        covered = coverage(runs, [])
    split = {r["group"]: r for r in refusal_split_rows(groups, covered)}
    changes = change_rows(groups, covered)
    differences = difference_rows(groups, "sft", covered)
    assert split["ssr"]["seeds"] == 2 and split["ssr"]["declined"] == pytest.approx(0.45)
    assert "ssr3: no items of ood_nq/over_refusal" in caplog.text
    refusal = {r.group: r.estimate for r in changes if r.measure.name == "ood_nq/over_refusal"}
    assert refusal["ssr"].n_seeds == 2 and refusal["sft"].n_seeds == 1
    ifeval = {r.group: r.estimate for r in changes if r.measure.name == "ifeval/refused"}
    assert ifeval["ssr"].n_seeds == 3  # the run stays in the measures it has
    diff = next(r.estimate for r in differences if r.measure.name == "ood_nq/over_refusal")
    assert diff.mean == pytest.approx(0.45)  # ssr declines 45% of the rows, sft none
    declines = {(r["source"], r["group"]): r for r in decline_rows(groups)}
    assert declines["ood_nq", "ssr"]["seeds"] == 2 and declines["ifeval", "ssr"]["seeds"] == 3
    cli = [sys.executable, "-m", "ssr.cli.report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]
    done = subprocess.run(cli, capture_output=True, text=True, check=True)  # ssr-report, as a user runs it
    assert f"WARNING ssr.report.paired: {tmp_path / 'runs'}" in done.stderr
    assert done.stderr.count("ssr3: no items of ood_nq/over_refusal") == 1  # once, not once per table
