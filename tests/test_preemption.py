"""Preemption: a real SIGTERM to a real ``ssr-train`` process saves ``last.ckpt`` at the current step,
writes ``STATUS`` (interrupted at step N), exits 143, and ``ckpt_path=last`` resumes exactly there."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from cli_runs import cli_env, train_cmd

TESTS = Path(__file__).resolve().parent
SAME = (
    "method=sft",
    "trainer.max_epochs=2",  # 8 steps, a checkpoint every 2
    "trainer.log_every_n_steps=1",
    "peft.lora_dropout=0.05",  # dropout on: the resume must restore the RNG states too
    "data.max_val_rows=0",
)


class PauseAtStep(L.Callback):
    """After optimizer step ``step``: touch ``<folder>/reached``, wait for ``<folder>/go`` (the test
    sends its signal in between, while this process is inside the training loop)."""

    def __init__(self, step: int, folder: str) -> None:
        self.step, self.folder = step, Path(folder)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step or (self.folder / "reached").exists():
            return
        (self.folder / "reached").touch()
        deadline = time.monotonic() + 120
        while not (self.folder / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def _losses(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv") as fh:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")}


def _start(run: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    env = cli_env(SSR_CACHE=str(tmp_path / "cache"))
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(TESTS)])
    cmd = train_cmd(*SAME, f"hydra.run.dir={run}", *extra)
    return subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _signal_at(proc: subprocess.Popen, folder: Path, signum: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not (folder / "reached").exists():
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "the run never reached the step"
        time.sleep(0.1)
    proc.send_signal(signum)
    time.sleep(0.5)  # the handler runs in the main thread, between two sleeps of the pause
    (folder / "go").touch()


@pytest.mark.parametrize("signum", [signal.SIGTERM], ids=["SIGTERM"])
def test_signal_saves_the_current_step_says_so_and_resumes_exactly(tmp_path, signum):
    """Before: SIGTERM at step 7 of 24: one more step, exit 0, last.ckpt at step 5, no STATUS."""
    whole = tmp_path / "whole"
    proc = _start(whole, tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    assert (whole / "STATUS").read_text() == "done\n"

    run, flags = tmp_path / "run", tmp_path / "flags"
    flags.mkdir()
    pause = (
        f"+callbacks.pause._target_={__name__}.PauseAtStep",
        "+callbacks.pause.step=2",
        f"+callbacks.pause.folder={flags}",
    )
    proc = _start(run, tmp_path, *pause)
    _signal_at(proc, flags, signum)
    out, _ = proc.communicate(timeout=300)
    # the signal came after step 2's checks: step 3 ends the run, between two periodic checkpoints
    assert proc.returncode == 128 + signum, out[-4000:]
    last = run / "checkpoints" / "last.ckpt"
    assert (run / "STATUS").read_text() == (
        f"interrupted at step 3 by {signal.Signals(signum).name} (checkpoint {last}); resume with ckpt_path=last\n"
    )
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 3
    assert not (run / "summary.json").exists() and not (run / "adapter").exists()

    proc = _start(run, tmp_path, "ckpt_path=last")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    assert f"ckpt_path=last: resuming from {last}" in out
    assert (run / "STATUS").read_text() == "done\n"
    resumed, uninterrupted = _losses(run), _losses(whole)
    assert resumed.keys() == uninterrupted.keys() == set(range(8))
    for step in range(8):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-5), step
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "last.ckpt", "step2.ckpt", "step4.ckpt", "step6.ckpt", "step8.ckpt"
    ]  # fmt: skip


@pytest.mark.slow
def test_a_signal_to_rank_0_of_a_gloo_ddp_run_stops_both_ranks_at_one_step(tmp_path):
    """Two CPU processes (gloo): only rank 0 gets SIGTERM; one all-reduce of the flag makes both
    save at the same step and exit (no rank left waiting in a collective)."""
    run, flags = tmp_path / "run", tmp_path / "flags"
    flags.mkdir()
    proc = _start(
        run, tmp_path, "trainer=ddp", "callbacks.model_checkpoint.every_n_train_steps=3",
        f"+callbacks.pause._target_={__name__}.PauseAtStep", "+callbacks.pause.step=1", f"+callbacks.pause.folder={flags}",
    )  # fmt: skip
    _signal_at(proc, flags, signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, out[-4000:]
    last = run / "checkpoints" / "last.ckpt"
    assert (run / "STATUS").read_text().startswith(f"interrupted at step 2 by SIGTERM (checkpoint {last})")
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 2
    deadline = time.monotonic() + 60
    while subprocess.run(["pgrep", "-f", f"hydra.run.dir={run}"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "rank 1 is still running"
        time.sleep(0.5)
    assert "interrupted at step 2" in (run / "train_ddp_process_1.log").read_text()


def test_a_signal_outside_the_training_loop_stops_at_once_and_handlers_are_restored(tmp_path):
    """During data preparation (generation, judging: their caches keep every finished batch) there
    is no step to save: the run stops at once, exit code 128+signal, and STATUS says where."""
    from ssr.training.preemption import Preempted, Preemption, write_status

    before = signal.getsignal(signal.SIGTERM)
    preemption = Preemption(requeue_signal="USR2")
    preemption.install()
    try:
        with pytest.raises(Preempted) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises in the main thread before this ends
    finally:
        preemption.uninstall()
    assert stopped.value.code == 143 and signal.getsignal(signal.SIGTERM) is before
    write_status(tmp_path, stopped.value)
    assert (tmp_path / "STATUS").read_text() == (
        "interrupted before training (data preparation) by SIGTERM (no new checkpoint); resume with ckpt_path=last\n"
    )
