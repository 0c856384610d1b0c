"""Markdown tables of the report."""

from __future__ import annotations

import statistics
from typing import Any

from ssr.report.paired import ALPHA, Row
from ssr.report.runs import (
    TASK_BREAKDOWN,
    Run,
    _by_method,
    _fmt,
    answerable_only,
    benchmark_keys,
    generative_keys,
    relative_change,
    task_columns,
    task_keys,
    task_sets,
)
from ssr.report.stats import benjamini_hochberg


def table(runs: list[Run]) -> str:
    """Markdown: rows base + each method (mean ± std over seeds), paper-shaped columns."""
    bench = benchmark_keys(runs)
    tasks = task_keys(runs)
    cols = tasks + bench + generative_keys(runs)
    header = [
        "method",
        "seeds",
        *[k.split("/", 1)[1] for k in cols],
        "avg change vs base (points)",
        "avg rel. change vs base (%)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base_row = ["base", str(len({r.seed for r in runs}))]
    base_row += [_fmt([r.base.get(k) for r in runs]) for k in cols] + ["0.0", "0.0"]
    lines.append("| " + " | ".join(base_row) + " |")
    for method, group in _by_method(runs).items():
        row = [method, str(len(group))]
        row += [_fmt([r.final.get(k) for r in group]) for k in cols]
        row.append(_fmt([relative_change(r, bench, relative=False) for r in group]))
        row.append(_fmt([relative_change(r, bench) for r in group]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def delta_table(runs: list[Run]) -> str:
    """Markdown: change vs base of every column (points; self-drift NLL increase in %), mean ± std."""
    cols = task_keys(runs) + benchmark_keys(runs) + generative_keys(runs)
    header = ["method", "seeds", *[k.split("/", 1)[1] for k in cols]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, group in _by_method(runs).items():
        cells = [_fmt([r.final[k] - r.base[k] for r in group if k in r.final and k in r.base]) for k in cols]
        lines.append("| " + " | ".join([method, str(len(group)), *cells]) + " |")
    return "\n".join(lines)


def task_breakdown_table(runs: list[Run]) -> str:
    """Markdown: per task set, the task as three numbers that cannot hide each other (unanswerable
    F1, share of the answerable rows answered, token recall on the rows answered) and the combined
    score (mean of unanswerable F1 / answered share and answer recall), mean ± std over seeds."""
    sets = task_sets(k for r in runs for k in r.final)
    header = "| set | row | seeds | unanswerable F1 | answered | recall on answered | combined score |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    only = answerable_only([r.base for r in runs])
    f1, refused, answered_recall = (f"/{m}" for m in TASK_BREAKDOWN)

    def cells(scores: list[dict[str, float]], name: str) -> list[str]:
        get = lambda m: [s.get(f"tasks/{name}{m}") for s in scores]  # noqa: E731
        combined = task_columns([name], only)
        score = [
            statistics.fmean(v) if len(v := [s[k] for k in combined if k in s]) == len(combined) else None
            for s in scores
        ]
        answered = [None if v is None else 1 - v for v in get(refused)]
        f1_cell = "–" if only(name) else _fmt(get(f1))
        return [f1_cell, _fmt(answered), _fmt(get(answered_recall)), _fmt(score)]

    for name in sets:
        with_set = [r for r in runs if any(k.startswith(f"tasks/{name}/") for k in r.final)]
        base = [r.base for r in with_set]
        lines.append(
            f"| {name} | base | {len({r.seed for r in with_set})} | " + " | ".join(cells(base, name)) + " |"
        )
        for method, group in _by_method(with_set).items():
            row = cells([r.final for r in group], name)
            lines.append(f"| {name} | {method} | {len(group)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def cost_table(runs: list[Run]) -> str:
    """Markdown: wall time per run and the drift evaluation's share of each epoch."""
    lines = [
        "| method | seed | run wall s | epoch s (train + val, mean) | suite + self-drift s per epoch (mean) "
        "| share of epoch | IFEval s per epoch (mean) | task metrics s (last epoch) | final evaluation s "
        "| of it IFEval s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, group in _by_method(runs).items():
        for r in sorted(group, key=lambda r: r.seed):
            epoch = [s["epoch"] for s in r.seconds if "epoch" in s]
            drift = [s["drift"] for s in r.seconds if "drift" in s]
            tasks = [s["tasks"] for s in r.seconds if "tasks" in s]
            ifeval = [s["ifeval"] for s in r.seconds if "ifeval" in s]
            share = (
                f"{100 * statistics.fmean(drift) / statistics.fmean(epoch):.0f}%" if epoch and drift else "–"
            )
            cells = [
                f"{r.wall_s:.0f}" if r.wall_s else "–",
                f"{statistics.fmean(epoch):.0f}" if epoch else "–",
                f"{statistics.fmean(drift):.0f}" if drift else "–",
                share,
                f"{statistics.fmean(ifeval):.0f}" if ifeval else "–",
                f"{tasks[-1]:.0f}" if tasks else "–",
                f"{r.final_eval_s:.0f}" if r.final_eval_s else "–",
                f"{r.final_ifeval_s:.0f}" if r.final_ifeval_s else "–",
            ]
            lines.append(f"| {method} | {r.seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def selection_table(runs: list[Run]) -> str:
    lines = [
        "| method | seed | self | paraphrase | rewrite | gold | self (answerable) | self (unanswerable) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r.method, r.seed)):
        s = r.selection or {}
        src, ans, una = (
            s.get("by_source", {}),
            s.get("by_source_answerable", {}),
            s.get("by_source_unanswerable", {}),
        )
        cells = [f"{100 * src.get(k, 0):.0f}%" for k in ("self", "paraphrase", "rewrite", "gold")]
        lines.append(
            f"| {r.method} | {r.seed} | "
            + " | ".join(cells)
            + f" | {100 * ans.get('self', 0):.0f}% | {100 * una.get('self', 0):.0f}% |"
        )
    return "\n".join(lines)


def _cell(value: float, scale: float) -> str:
    return f"{value * scale:+.{1 if scale != 1 else 3}f}"


def rows_table(rows: list[Row], title_col: str) -> str:
    """Markdown: one line per (group, measure): change, 95% CI, p (the test named), its
    Benjamini-Hochberg q over the table's rows, the exact item test's p on the seed means, n, MDD;
    * = p < 0.05."""
    lines = [
        f"| {title_col} | measure | n items | seeds | change | 95% CI | p | q (BH) | test "
        "| item p (seed means, test) | MDD (80% power) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    q_values = benjamini_hochberg([row.estimate.p_value for row in rows])
    for row, q in zip(rows, q_values):
        e, s = row.estimate, row.measure.scale
        mark = " *" if e.p_value < ALPHA else ""
        lines.append(
            f"| {row.group} | {row.measure.name} | {e.n_items} | {e.n_seeds} | {_cell(e.mean, s)}{mark} "
            f"| [{_cell(e.lo, s)}, {_cell(e.hi, s)}] | {e.p_value:.3g} | {q:.3g} | {e.test} | {e.item_p:.3g} ({e.item_test}) "
            f"| {row.mdd * s:.{1 if s != 1 else 3}f} |"
        )
    return "\n".join(lines)


def refusal_split_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per group and over-refusal set, the declines where the base declined / answered."""

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    lines = [
        "| method | set | n items | seeds | base declined (%) | declined (%) | where the base declined (%) "
        "| where the base answered (%) | difference, 95% CI (points) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gap = r["gap_ci"]
        diff = (
            f"{100 * (r['where_base_declined'] - r['where_base_answered']):+.1f} "
            f"[{100 * gap[0]:+.1f}, {100 * gap[1]:+.1f}]"
            if gap
            else "–"
        )
        lines.append(
            f"| {r['group']} | {r['measure'].removesuffix('/over_refusal')} | {r['n_items']} | {r['seeds']} "
            f"| {pct(r['base_declined'])} | {pct(r['declined'])} | {pct(r['where_base_declined'])} "
            f"| {pct(r['where_base_answered'])} | {diff} |"
        )
    return "\n".join(lines)


def decline_table(rows: list[dict[str, Any]], width: int = 72) -> str:
    """Markdown: per reply source and method, the declines, how many carry the task's sentence
    whole, and the commonest declining reply (cut to ``width`` characters)."""

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    def quote(text: str | None) -> str:
        if text is None:
            return "–"
        text = text if len(text) <= width else text[: width - 1] + "…"
        return "`" + text.replace("|", "\\|").replace("`", "'") + "`"

    lines = [
        "| source | method | seeds | replies | declined (%) | with the task's sentence whole (% of declines) "
        "| commonest declining reply | its share (% of declines) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['source']} | {r['group']} | {r['seeds']} | {r['replies']} | {pct(r['declined'])} "
            f"| {pct(r['whole_sentence'])} | {quote(r['top_decline'])} | {pct(r['top_share'])} |"
        )
    return "\n".join(lines)


def pareto_table(points: list[dict[str, Any]]) -> str:
    def f(v: float | None, digits: int = 1) -> str:
        return "–" if v is None else f"{v:+.{digits}f}"

    lines = [
        "| method | lr | seeds | chosen | task gain (points) | benchmark change (points) | self-drift (%) "
        "| kl_task | IFEval (points) | refusal leak (%) | on the Pareto front of |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        lr = "–" if p["lr"] is None else f"{p['lr']:g}"
        front = ", ".join(p.get("front", [])) or "–"
        lines.append(
            f"| {p['method']} | {lr} | {p['seeds']} | {'yes' if p['chosen'] else ''} | {f(p['task_gain'])} "
            f"| {f(p['benchmark_change'])} | {f(p['self_drift'])} | {f(p['kl_task'], 4)} "
            f"| {f(p.get('ifeval'))} | {f(p.get('refusal_leak'))} | {front} |"
        )
    return "\n".join(lines)
