"""Judge audit: agreement, kappa and confusion on hand-made rows, rule_qa vs the hf judge on
the tiny model, and the ``ssr-judge audit`` entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssr.data.records import Record
from ssr.report.judge_audit import AuditRow, audit_rows, rows_from_caches, rows_from_judges, split_audit


def _rows(a, b, answerable):
    return [AuditRow(str(i), ans, x, y) for i, (x, y, ans) in enumerate(zip(a, b, answerable))]


def test_agreement_kappa_and_confusion_by_hand():
    # A accepts 3 of 6, B 3 of 6, they agree on 4: kappa = (4/6 - 1/2) / (1 - 1/2) = 1/3
    rows = _rows([1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1], [True] * 6)
    s = split_audit([AuditRow(r.id, r.answerable, bool(r.accept_a), bool(r.accept_b)) for r in rows])
    assert s.n == 6 and s.agreement == pytest.approx(4 / 6) and s.kappa == pytest.approx(1 / 3)
    assert s.confusion == {"accept": {"accept": 2, "reject": 1}, "reject": {"accept": 1, "reject": 2}}
    assert [d["id"] for d in s.disagreements] == ["1", "5"]


def test_splits_by_answerability():
    rows = _rows([True, False, True, True], [True, True, False, True], [True, True, False, False])
    report = audit_rows(rows)
    assert (report["all"].n, report["answerable"].n, report["unanswerable"].n) == (4, 2, 2)
    assert report["answerable"].agreement == 0.5 and report["unanswerable"].agreement == 0.5
    # answerable: A (1, 0), B (1, 1): p_o = 1/2, p_e = 1/2 * 1 + 1/2 * 0 = 1/2 -> kappa 0
    assert report["answerable"].kappa == pytest.approx(0.0)


def test_rule_qa_vs_hf_judge_on_the_tiny_model(tmp_path, tokenizer):
    from ssr.judges import RuleQAJudge
    from ssr.judges.hf import HFJudge
    from ssr.models.loading import tiny_random_model

    unans = "I cannot answer this question based on the provided document."
    records = [
        Record(id="a", question="Who wrote it?", gold="Ada wrote it", document="Ada wrote it."),
        Record(id="b", question="When?", gold="Monday", document="On Monday."),
        Record(id="u", question="Why?", gold=unans, document="Ada wrote it.", answerable=False),
        Record(id="v", question="Where?", gold=unans, document="On Monday.", answerable=False),
    ]
    candidates = ["Ada wrote it.", "Tuesday", unans, "In Paris."]
    hf = HFJudge(
        model_and_tokenizer=(tiny_random_model(tokenizer, seed=0).eval(), tokenizer), precision="none"
    )
    rows = rows_from_judges(records, candidates, RuleQAJudge(unans), hf, tmp_path)
    assert [r.accept_a for r in rows] == [True, False, True, False]  # the rule, by hand
    report = audit_rows(rows)
    b = [r.accept_b for r in rows]
    agree = sum(x == y for x, y in zip([True, False, True, False], b))
    assert report["all"].agreement == pytest.approx(agree / 4)
    assert report["answerable"].n == 2 and report["unanswerable"].n == 2
    assert len(list((tmp_path / "verdicts").glob("*.jsonl"))) == 2  # both judges' verdict caches
    # the same verdicts again from the two cache files
    caches = sorted((tmp_path / "verdicts").glob("*.jsonl"))
    again = rows_from_caches(*caches, records)
    by_id = {r.id: r for r in rows}
    assert {(r.id, r.answerable) for r in again} == {(r.id, r.answerable) for r in rows}
    assert all({r.accept_a, r.accept_b} == {by_id[r.id].accept_a, by_id[r.id].accept_b} for r in again)


def test_ssr_judge_audit_writes_the_report(tiny_cfg):
    from ssr.cli.stages import audit

    cfg = tiny_cfg("method=ssr", "judge=rule_qa", "judge.threshold=0.0", "+audit.reference=rule_qa")
    result = audit(cfg)
    out = Path(cfg.paths.output_dir)
    saved = json.loads((out / "judge_audit.json").read_text())
    assert saved["judge_b"] == "rule_qa" and saved["all"]["n"] == 16 == result["all"]["n"]
    assert saved["answerable"]["n"] + saved["unanswerable"]["n"] == 16
    # threshold 0 accepts every answerable answer: A never rejects where B (0.5) accepts
    assert saved["answerable"]["confusion"]["reject"]["accept"] == 0
    assert saved["answerable"]["accept_rate_a"] == 1.0
    assert "## unanswerable rows" in (out / "judge_audit.md").read_text()
    with pytest.raises(ValueError, match="no such judge config"):
        audit(tiny_cfg("method=ssr", "+audit.reference=nope"))


def test_ssr_judge_audit_subcommand_dispatches(tmp_path):
    """``ssr-judge audit ...`` (the console script's function) runs the audit, not the judge stage."""
    import subprocess
    import sys

    from cli_runs import cli_env
    from conftest import TINY_OVERRIDES

    out = tmp_path / "out"
    code = "import sys; from ssr.cli.stages import judge_main; sys.argv[0] = 'ssr-judge'; judge_main()"
    args = ["audit", *TINY_OVERRIDES, "+audit.reference=rule_qa", f"paths.output_dir={out}"]
    args += [f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((out / "judge_audit.json").read_text())["all"]["kappa"] == 1.0  # the same judge twice
    assert not (out / "selection.jsonl").exists()  # the judge stage did not run
