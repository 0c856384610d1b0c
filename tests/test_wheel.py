"""A built wheel carries its Hydra config tree and package data: the entry points run without a checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cli_runs import DIST_VARS
from conftest import REPO, TINY_OVERRIDES


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    """``pip wheel`` this checkout (no network, no build isolation) and install it into a target dir."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the checkout's files: an in-tree build/ keeps files deleted since.
    source = tmp / "source"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    )
    for name in listed.stdout.splitlines():
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    pip_wheel = ["pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp), str(source)]
    build = subprocess.run([sys.executable, "-m", *pip_wheel], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = tmp.glob("ssr-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "ssr/conf/train.yaml",
        "ssr/conf/model/tiny_random.yaml",
        "ssr/conf/hydra/launcher/slurm.yaml",
        "ssr/eval/tasks/ssr_boolq.yaml",
        "ssr/eval/tasks/mmlu/_ssr_mmlu_template.yaml",
        "ssr/generation/decode_attention.cpp",  # the decode-attention kernel, built on first use
        "ssr/eval/data/self_drift_prompts.jsonl",
    ):
        assert needed in names, f"{needed} missing from {wheel.name}"
    site = tmp / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return site


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Python with only the wheel's ssr importable (no src/ on the path, no SSR_CONF_DIR)."""
    env = {k: v for k, v in os.environ.items() if k not in (*DIST_VARS, "SSR_CONF_DIR")}
    env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_wheel_runs_hydra_entry_points_outside_the_repo(wheel_site, tmp_path):
    where = _run(
        wheel_site, tmp_path, "-c", "import ssr, ssr.cli._hydra as h; print(ssr.__file__); print(h.CONF_DIR)"
    )
    assert where.returncode == 0, where.stderr[-3000:]
    module_file, conf_dir = where.stdout.split()
    assert Path(module_file).is_relative_to(wheel_site), module_file
    assert Path(conf_dir) == wheel_site / "ssr" / "conf"

    for entry in ("ssr.cli.train", "ssr.cli.eval"):
        helped = _run(wheel_site, tmp_path, "-m", entry, "--help")
        assert helped.returncode == 0, helped.stderr[-3000:]
        assert "== Configuration groups ==" in helped.stdout and "model: " in helped.stdout

    # the user's own config tree beside the shipped one (hydra.searchpath), and SSR_CONF_DIR
    (tmp_path / "my_conf" / "data").mkdir(parents=True)
    (tmp_path / "my_conf" / "data" / "mine.yaml").write_text(
        "defaults:\n  - jsonl\ntrain:\n  path: my.jsonl\n  format: alpaca\n"
    )
    shown = _run(
        wheel_site,
        tmp_path,
        "-m",
        "ssr.cli.train",
        f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
        "data=mine",
        "--cfg",
        "job",
        "--package",
        "data",
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "format: alpaca" in shown.stdout and "_target_: ssr.data.adapters.jsonl" in shown.stdout

    job = _run(
        wheel_site,
        tmp_path,
        "-m",
        "ssr.cli.train",
        *TINY_OVERRIDES,
        "data.max_train_rows=4",
        "data.max_val_rows=0",
        "eval.suite=none",
        "hydra.run.dir=run",
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-6000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    assert summary["adapter"].endswith("adapter")


@pytest.mark.slow
def test_stock_lm_eval_cli_runs_the_wheels_packaged_tasks(wheel_site, tmp_path, tokenizer, data_root):
    """README: ``lm_eval --include_path <ssr/eval/tasks>`` with lm-eval's own CLI, from the wheel."""
    from ssr.models.loading import tiny_random_model

    tiny_random_model(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    tasks_dir = wheel_site / "ssr" / "eval" / "tasks"
    args = [
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={tmp_path / 'model'},dtype=float32",
    ]
    args += ["--include_path", str(tasks_dir), "--tasks", "ssr_boolq", "--limit", "4", "--device", "cpu"]
    proc = _run(wheel_site, tmp_path, *args, "--output_path", str(tmp_path / "results"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ssr_boolq" in proc.stdout and "acc" in proc.stdout
    [results] = (tmp_path / "results").rglob("results_*.json")
    scores = json.loads(results.read_text())["results"]["ssr_boolq"]
    assert 0.0 <= scores["acc,none"] <= 1.0
