"""notebooks/drift_report.ipynb runs top to bottom on a runs.json written by ssr-report."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

from ssr.cli.report import main as report_main
from test_report import _run

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "drift_report.ipynb"


def test_notebook_reads_runs_json_and_draws(tmp_path, monkeypatch, capsys):
    matplotlib.use("Agg")
    _run(tmp_path / "runs", "sft", 1, [0.58, 0.54], 0.7, 0.05)
    _run(tmp_path / "runs", "ssr", 1, [0.60, 0.59], 0.7, 0.01)
    report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    monkeypatch.setenv("SSR_RUNS_JSON", str(tmp_path / "report" / "runs.json"))
    monkeypatch.setenv("SSR_PLOTS_DIR", str(tmp_path / "plots"))
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    namespace: dict = {}
    for cell in cells:
        exec(compile("".join(cell["source"]), str(NOTEBOOK), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "2 runs" in printed and "| ssr | 1 |" in printed and "## " not in printed
    assert (tmp_path / "plots" / "drift_summary.png").stat().st_size > 1000
    assert len(namespace["pngs"]) == len(list((tmp_path / "plots").glob("*.png")))
