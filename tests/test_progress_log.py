"""Training progress reaches stdout and the run's log file without a terminal; lm-eval shows one
progress bar per evaluation, not one per task."""

from __future__ import annotations

import re

from cli_runs import run_train


def test_progress_lines_reach_stdout_and_the_run_log_without_a_terminal(tmp_path):
    run = tmp_path / "run"
    proc = run_train(  # capture_output: stdout/stderr are pipes, not a terminal
        f"hydra.run.dir={run}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "method=sft",
        "trainer.log_every_n_steps=2",
        cwd=tmp_path,
    )
    pattern = re.compile(r"step (\d+)/4 \| epoch 0 \| loss \d+\.\d+ .*\| lr [\d.e+-]+ \| elapsed")
    steps = [int(m.group(1)) for m in pattern.finditer(proc.stdout)]
    assert steps == [2, 4], proc.stdout[-3000:]
    log_file = run / "train.log"
    assert log_file.is_file() and len(pattern.findall(log_file.read_text())) == 2
    assert "stage seconds:" in proc.stdout


def test_lm_eval_shows_one_progress_bar_per_request_type(tokenizer, tiny_model, data_root, capsys):
    from ssr.eval.suite import run_suite

    run_suite(
        tiny_model,
        tokenizer,
        ["ssr_piqa", "ssr_arc_easy", "ssr_mmlu"],  # 12 leaf tasks (mmlu: 10 subjects)
        limits=2,
        data_root=data_root,
    )
    err = capsys.readouterr().err
    bars = {line.split(":")[0].strip() for line in err.replace("\r", "\n").splitlines() if "%|" in line}
    assert bars == {"Running loglikelihood requests"}, bars
