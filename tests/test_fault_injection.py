"""kill -9 during generation, judging and training; re-running the same ``ssr-train`` loses nothing.

One run directory and one private cache go through four processes of the real CLI:

1. killed from outside at a random (seeded) point during self-generation;
2. killed by ``SSR_FAULT_AT`` in the middle of a verdict-cache write (a torn last line);
3. killed from outside at a random (seeded) moment after a random checkpoint appeared;
4. finishes.

Rows and steps are counted before and after every fault: each generation, verdict and selection
row exists exactly once, training resumes from the last checkpoint (global_step continues) and
the final adapter equals the adapter of an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, compose

SEED = int(os.environ.get("SSR_FAULT_SEED", "20240907"))
ROWS, BATCH, EPOCHS, CKPT_EVERY = 16, 4, 2, 2
TOTAL_STEPS = EPOCHS * ROWS // BATCH
GEN_BATCH, JUDGE_BATCH = 2, 2
OVERRIDES = [
    "model=tiny_random",
    "method=ssr",
    "judge=rule_qa",
    f"judge.batch_size={JUDGE_BATCH}",
    f"data.max_train_rows={ROWS}",
    "data.max_val_rows=0",
    f"data.batch_size={BATCH}",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    f"generator.batch_size={GEN_BATCH}",
    # batches of GEN_BATCH rows written as each finishes: the continuous engine would write all 16
    # rows of the tiny random model (none ends early) at the same step, leaving no moment to kill in
    "generator.engine=hf",
    "generator.decoding.max_new_tokens=16",
    f"callbacks.model_checkpoint.every_n_train_steps={CKPT_EVERY}",
    "peft.lora_dropout=0.0",  # no RNG in the step: the resumed run must equal an uninterrupted one
    # one precision for every process: `auto` is measured per cache, and the in-process reference
    # run below measures again (a loaded CPU can tip bf16 vs fp32, and the weights then differ)
    "trainer.precision=32-true",
    "logger=csv",
    "+logger.csv.flush_logs_every_n_steps=1",
    "ckpt_path=last",  # the same command starts fresh and resumes
    "eval.callback.enabled=false",
]


# --------------------------------------------------------------------------- helpers
def _complete_lines(path: Path) -> list[bytes]:
    raw = path.read_bytes() if path.exists() else b""
    return raw.split(b"\n")[:-1]


def _keys(path: Path) -> list[str]:
    return [json.loads(line)["key"] for line in _complete_lines(path)]


def _one_file(folder: Path) -> Path | None:
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    assert len(files) <= 1, files
    return files[0] if files else None


class Run:
    """The user's command, started again and again against one run dir and one cache."""

    def __init__(self, tmp: Path, models_dir: Path) -> None:
        self.tmp, self.dir, self.cache = tmp, tmp / "run", tmp / "ssr_cache"
        self.cache.mkdir()
        (self.cache / "models").symlink_to(models_dir)  # the tokenizer, converted once per machine
        self.n = 0

    @property
    def generations(self) -> Path | None:
        return _one_file(self.cache / "generations")

    @property
    def verdicts(self) -> Path | None:
        return _one_file(self.cache / "verdicts")

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    def start(self, **env: str) -> tuple[subprocess.Popen, Path]:
        self.n += 1
        log = self.tmp / f"attempt{self.n}.log"
        full_env = {
            **os.environ,
            "PYTHONPATH": str(REPO / "src"),
            "SSR_CACHE": str(self.cache),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        cmd = [sys.executable, "-m", "ssr.cli.train", *OVERRIDES, f"hydra.run.dir={self.dir}"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=self.tmp, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        return proc, log

    @staticmethod
    def tail(log: Path) -> str:
        return log.read_text(errors="replace")[-4000:]

    def kill_when(self, proc: subprocess.Popen, log: Path, ready, rng: random.Random, timeout: float = 300):
        """SIGKILL ``proc`` a random few ms after ``ready()`` turns true; fail if it exits first."""
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                pytest.fail(
                    f"attempt {self.n} exited ({proc.returncode}) before the fault:\n{self.tail(log)}"
                )
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"attempt {self.n}: fault point not reached in {timeout}s:\n{self.tail(log)}")
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL

    def wait(self, proc: subprocess.Popen, log: Path, expect: int, timeout: float = 300) -> str:
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"attempt {self.n} hung:\n{self.tail(log)}")
        assert rc == expect, f"attempt {self.n}: exit {rc}, expected {expect}:\n{self.tail(log)}"
        return log.read_text(errors="replace")


def _ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def _train_steps(metrics_rows: list[dict[str, str]]) -> list[int]:
    return sorted({int(r["step"]) for r in metrics_rows if r.get("train/loss")})


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


# --------------------------------------------------------------------------- the test
def test_kill_9_in_every_stage_then_rerun_loses_nothing(tmp_path, tokenizer):
    from ssr.cli.train import train
    from ssr.models.loading import embedded_tokenizer_dir

    rng = random.Random(SEED)
    run = Run(tmp_path, embedded_tokenizer_dir().parent)

    # 1. generation: external kill -9 once a random number of rows is cached -------------------
    target = GEN_BATCH * rng.randrange(1, ROWS // GEN_BATCH)
    proc, log = run.start()
    run.kill_when(
        proc, log, lambda: run.generations is not None and len(_keys(run.generations)) >= target, rng
    )
    generated_1 = _keys(run.generations)
    assert 0 < len(generated_1) < ROWS, "the kill must land inside the generation stage"
    assert len(set(generated_1)) == len(generated_1)
    assert run.verdicts is None and not (run.dir / "selection.jsonl").exists()
    assert not run.checkpoints.exists()

    # 2. judging: killed inside a verdict-cache write (torn last line) ------------------------
    write_no = rng.randrange(2, ROWS // JUDGE_BATCH)  # the n-th write of JUDGE_BATCH verdicts
    proc, log = run.start(SSR_FAULT_AT=f"cache.verdicts:{write_no}")
    out = run.wait(proc, log, expect=-signal.SIGKILL)
    generated_2 = _keys(run.generations)
    assert generated_2[: len(generated_1)] == generated_1, "cached rows are kept, never rewritten"
    assert sorted(generated_2) == sorted(set(generated_2)) and len(generated_2) == ROWS, out[-3000:]
    raw = run.verdicts.read_bytes()
    assert not raw.endswith(b"\n"), "the kill left a torn last line"
    judged_2 = _keys(run.verdicts)
    # earlier writes, plus the lines of the torn write before its half-written last line
    assert len(judged_2) == write_no * JUDGE_BATCH - 1 == len(set(judged_2))
    assert not (run.dir / "selection.jsonl").exists() and not run.checkpoints.exists()

    # 3. training: external kill -9 a random moment after a random checkpoint appeared ---------
    ckpt_at = CKPT_EVERY * rng.randrange(1, TOTAL_STEPS // CKPT_EVERY)
    proc, log = run.start()
    run.kill_when(proc, log, lambda: (run.checkpoints / f"step{ckpt_at}.ckpt").exists(), rng)
    out = log.read_text(errors="replace")
    assert "dropped a torn last line" in out
    assert "ckpt_path=last: no checkpoint in" in out, "ckpt_path=last starts fresh"
    judged_3 = _keys(run.verdicts)
    assert run.verdicts.read_bytes().endswith(b"\n"), "the torn line was cut off"
    assert judged_3[: len(judged_2)] == judged_2 and len(judged_3) == ROWS == len(set(judged_3))
    assert _keys(run.generations) == generated_2, "nothing regenerated"
    selection = [json.loads(line) for line in _complete_lines(run.dir / "selection.jsonl")]
    assert len(selection) == ROWS == len({s["id"] for s in selection})
    newest = max(run.checkpoints.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    step_before = _ckpt_step(newest)  # last.ckpt may be missing or one save behind
    assert ckpt_at <= step_before < TOTAL_STEPS
    metrics_before = _metrics(run.dir)
    # Lightning writes a step's metrics just after that step's checkpoint: a kill in between loses
    # the metrics row of the checkpointed step (the step itself is kept), nothing earlier.
    assert set(_train_steps(metrics_before)) >= set(range(step_before - 1))

    # 4. the same command again: resumes from last.ckpt and finishes -----------------------------
    proc, log = run.start()
    out = run.wait(proc, log, expect=0)
    assert f"ckpt_path=last: resuming from {newest}" in out
    assert f"Restored all states from the checkpoint at {newest}" in out
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["global_step"] == TOTAL_STEPS
    metrics_after = _metrics(run.dir)
    unlogged = set(range(TOTAL_STEPS)) - set(_train_steps(metrics_after))
    assert unlogged <= {step_before - 1} - set(_train_steps(metrics_before)), unlogged
    kept = [r for r in metrics_before if int(r["step"]) < step_before]
    assert metrics_after[: len(kept)] == kept, "metrics of the interrupted run are kept"
    steps_after = _train_steps(metrics_after[len(kept) :])
    assert steps_after == list(range(step_before, TOTAL_STEPS)), "every remaining step ran exactly once"
    stages = summary["selection"]["extra"]["stages"]
    assert stages["generate_self"]["computed"] == 0 and stages["judge_self"]["computed"] == 0
    assert _keys(run.generations) == generated_2 and _keys(run.verdicts) == judged_3
    assert [json.loads(x) for x in _complete_lines(run.dir / "selection.jsonl")] == selection

    # the resumed run trained on exactly the batches an uninterrupted run trains on
    cfg = compose([o for o in OVERRIDES if o != "ckpt_path=last"])
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "reference")
        cfg.paths.cache_dir = str(run.cache)
        del cfg["hydra"]
    reference = train(cfg)
    assert reference["global_step"] == TOTAL_STEPS
    resumed, uninterrupted = _adapter(run.dir), _adapter(tmp_path / "reference")
    assert resumed.keys() == uninterrupted.keys()
    for name, weight in uninterrupted.items():
        torch.testing.assert_close(resumed[name], weight, rtol=1e-5, atol=1e-6, msg=name)
