"""Judge audit: how often two judges agree on the same own answers, before paying for one.

``ssr-judge audit judge=A +audit.reference=B`` (B: a judge config name, or a full judge config)
judges the base model's own answers to the training prompts with both judges (through the
verdict cache) and reports, for all rows and separately for answerable and unanswerable ones:
agreement, Cohen's kappa, the confusion table (judge A x judge B) and up to 10 disagreement
examples. ``+audit.caches=[a.jsonl,b.jsonl]`` compares two verdict cache files instead, rows
paired by record id. Written to ``<output_dir>/judge_audit.json`` and ``judge_audit.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ssr.data.records import Record
from ssr.report.stats import cohen_kappa
from ssr.runtime.cache import JsonlCache
from ssr.runtime.files import atomic_write_text
from ssr.selection.pipeline import StageCounters, judge_candidates

MAX_EXAMPLES = 10
SPLITS = ("all", "answerable", "unanswerable")


@dataclass(frozen=True)
class AuditRow:
    """One own answer and both judges' verdicts on it."""

    id: str
    answerable: bool | None
    accept_a: bool
    accept_b: bool
    score_a: float | None = None
    score_b: float | None = None
    question: str = ""
    gold: str = ""
    candidate: str = ""


@dataclass
class SplitAudit:
    n: int
    agreement: float
    kappa: float
    accept_rate_a: float
    accept_rate_b: float
    # rows: judge A's verdict, columns: judge B's
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    disagreements: list[dict[str, Any]] = field(default_factory=list)


def _label(accept: bool) -> str:
    return "accept" if accept else "reject"


def split_audit(rows: Sequence[AuditRow]) -> SplitAudit:
    """Agreement, kappa, confusion table and the first disagreements of ``rows``."""
    n = len(rows)
    a = [r.accept_a for r in rows]
    b = [r.accept_b for r in rows]
    confusion = {
        _label(x): {
            _label(y): sum(1 for r in rows if r.accept_a == x and r.accept_b == y) for y in (True, False)
        }
        for x in (True, False)
    }
    nan = float("nan")
    return SplitAudit(
        n=n,
        agreement=sum(x == y for x, y in zip(a, b)) / n if n else nan,
        kappa=cohen_kappa(a, b),
        accept_rate_a=sum(a) / n if n else nan,
        accept_rate_b=sum(b) / n if n else nan,
        confusion=confusion,
        disagreements=[asdict(r) for r in rows if r.accept_a != r.accept_b][:MAX_EXAMPLES],
    )


def audit_rows(rows: Sequence[AuditRow]) -> dict[str, SplitAudit]:
    """:func:`split_audit` of all rows, the answerable and the unanswerable ones."""
    return {
        "all": split_audit(rows),
        "answerable": split_audit([r for r in rows if r.answerable is True]),
        "unanswerable": split_audit([r for r in rows if r.answerable is False]),
    }


def rows_from_judges(
    records: Sequence[Record],
    candidates: Sequence[str],
    judge_a: Any,
    judge_b: Any,
    cache_dir: Path,
) -> list[AuditRow]:
    """Both judges' verdicts (through the verdict cache) on each record's candidate."""

    counters = StageCounters()
    va = judge_candidates(judge_a, list(records), list(candidates), cache_dir, counters, "audit_a")
    vb = judge_candidates(judge_b, list(records), list(candidates), cache_dir, counters, "audit_b")
    return [
        AuditRow(r.id, r.answerable, a.accept, b.accept, a.score, b.score, r.question, r.gold, c)
        for r, c, a, b in zip(records, candidates, va, vb, strict=True)
    ]


def rows_from_caches(
    path_a: str | Path, path_b: str | Path, records: Sequence[Record] = ()
) -> list[AuditRow]:
    """Rows of two verdict cache files paired by record id (answerability from ``records``,
    ``None`` for ids they do not hold). An id judged several times keeps its last verdict."""
    by_id = {r.id: r for r in records}

    def verdicts(path: str | Path) -> dict[str, dict[str, Any]]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"audit.caches: no verdict cache {path}")
        return {row["id"]: row for row in JsonlCache(path) if "id" in row}

    a, b = verdicts(path_a), verdicts(path_b)
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError(f"audit.caches: {path_a} and {path_b} share no record ids")
    rows = []
    for i in shared:
        rec = by_id.get(i)
        rows.append(
            AuditRow(
                i,
                rec.answerable if rec else None,
                bool(a[i]["accept"]),
                bool(b[i]["accept"]),
                a[i].get("score"),
                b[i].get("score"),
                rec.question if rec else "",
                rec.gold if rec else "",
            )
        )
    return rows


def markdown(report: dict[str, SplitAudit], name_a: str, name_b: str) -> str:
    lines = [f"# Judge audit: {name_a} (A) vs {name_b} (B)", ""]
    for split in SPLITS:
        s = report[split]
        lines += [
            f"## {split} rows (n = {s.n})",
            "",
            f"agreement {s.agreement:.3f}, Cohen's kappa {s.kappa:.3f}, accept rate A {s.accept_rate_a:.3f}, "
            f"B {s.accept_rate_b:.3f}",
            "",
            "| A \\ B | accept | reject |",
            "|---|---|---|",
            *(
                f"| {x} | {s.confusion[x]['accept']} | {s.confusion[x]['reject']} |"
                for x in ("accept", "reject")
            ),
            "",
        ]
        if s.disagreements:
            lines += ["| id | A | B | question | gold | candidate |", "|---|---|---|---|---|---|"]
            for d in s.disagreements:
                cells = [_cell(d[k]) for k in ("question", "gold", "candidate")]
                lines.append(
                    f"| {d['id']} | {_label(d['accept_a'])} | {_label(d['accept_b'])} | "
                    + " | ".join(cells)
                    + " |"
                )
            lines.append("")
    return "\n".join(lines)


def _cell(text: str, width: int = 80) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def write_audit(report: dict[str, SplitAudit], out_dir: Path, name_a: str, name_b: str) -> Path:
    out_dir = Path(out_dir)
    payload = {"judge_a": name_a, "judge_b": name_b, **{k: asdict(v) for k, v in report.items()}}
    atomic_write_text(out_dir / "judge_audit.json", json.dumps(payload, indent=1, default=str))
    return atomic_write_text(out_dir / "judge_audit.md", markdown(report, name_a, name_b))
