"""Checkpoints a run resumes from: read without running code, checked byte for byte (zip CRCs)
before a resume, damaged ones passed over (``ckpt_path=last``) or refused (an explicit path)."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from ssr.cli._run import resume_checkpoint
from ssr.training.checkpoints import CheckpointError, damage


class _Payload:
    """Unpickling it runs code: it writes ``marker`` (what a crafted checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _overwrite_inside_a_tensor(path: Path, size: int = 1024) -> str:
    """1 KB of the largest tensor's bytes overwritten in place (the archive stays a valid zip)."""
    with zipfile.ZipFile(path) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as fh:  # a stored member's data follows its 30-byte local header
        fh.seek(member.header_offset + 26)
        name_len, extra_len = (int.from_bytes(fh.read(2), "little") for _ in range(2))
        start = member.header_offset + 30 + name_len + extra_len + member.file_size // 2 - size // 2
        fh.seek(start)
        old = fh.read(size)
        fh.seek(start)
        fh.write(bytes(b ^ 0xFF for b in old))
    assert zipfile.is_zipfile(path)
    return member.filename


# --------------------------------------------------------------------------- no code on load
def test_a_crafted_checkpoint_is_refused_before_its_pickle_runs(tiny_cfg, tmp_path):
    """Before: the resume preflight read the fingerprint with ``weights_only=False`` and ran it."""
    from ssr.training.fingerprint import check_resume

    marker = tmp_path / "payload_ran"
    ckpt = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "ssr_run": {"fingerprint": _Payload(marker)}}, ckpt)
    cfg = tiny_cfg(f"ckpt_path={ckpt}")
    with pytest.raises(CheckpointError, match=rf"{ckpt}: refusing to unpickle it \(it names exec, "):
        check_resume(cfg, Path(cfg.paths.output_dir), resume_checkpoint(cfg, Path(cfg.paths.output_dir)))
    assert not marker.exists(), "the checkpoint's pickle ran"


def test_no_source_file_unpickles_with_weights_only_false():
    src = Path(__file__).resolve().parents[1] / "src"
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text, path
        assert "pickle.load" not in text and "allow_pickle=True" not in text, path


# --------------------------------------------------------------------------- integrity
def test_damage_finds_one_kilobyte_overwritten_inside_a_tensor(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"w": torch.randn(256, 256)}, path)
    assert damage(path) is None
    member = _overwrite_inside_a_tensor(path)
    assert member in damage(path) and "CRC" in damage(path)
    (tmp_path / "cut.ckpt").write_bytes(path.read_bytes()[:1000])
    assert "not a complete zip archive" in damage(tmp_path / "cut.ckpt")


def test_ckpt_path_last_picks_the_newest_intact_checkpoint(tmp_path, caplog):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"ckpt_path": "last", "callbacks": {"model_checkpoint": {"dirpath": None}}})
    assert resume_checkpoint(cfg, tmp_path) is None  # nothing saved yet: a fresh start
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for i, name in enumerate(["step2.ckpt", "step4.ckpt", "last.ckpt"]):
        torch.save({"global_step": 2 * i, "w": torch.randn(64, 64)}, folder / name)
        os.utime(folder / name, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    assert resume_checkpoint(cfg, tmp_path) == str(folder / "last.ckpt")
    _overwrite_inside_a_tensor(folder / "last.ckpt")
    with caplog.at_level("WARNING"):
        assert resume_checkpoint(cfg, tmp_path, set_aside=True) == str(folder / "step4.ckpt")
    assert f"{folder / 'last.ckpt'} is damaged" in caplog.text and str(folder / "step4.ckpt") in caplog.text
    # set aside: neither the next `last` nor Lightning's own last.ckpt (last-v1.ckpt) sees it again
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt.damaged", "step2.ckpt", "step4.ckpt"]


def test_an_explicit_ckpt_path_to_a_damaged_file_is_one_line_naming_it(tmp_path):
    from omegaconf import OmegaConf

    path = tmp_path / "step4.ckpt"
    torch.save({"w": torch.randn(64, 64)}, path)
    _overwrite_inside_a_tensor(path)
    with pytest.raises(CheckpointError, match=rf"^ckpt_path={path}: archive member .* fails its CRC check"):
        resume_checkpoint(OmegaConf.create({"ckpt_path": str(path)}), tmp_path)
    with pytest.raises(CheckpointError, match=r"^ckpt_path=/nonexistent/x\.ckpt: no such file$"):
        resume_checkpoint(OmegaConf.create({"ckpt_path": "/nonexistent/x.ckpt"}), tmp_path)


def test_resume_past_a_damaged_last_ckpt_continues_from_the_good_one(tmp_path):
    """Before: 1 KB overwritten inside a tensor of last.ckpt resumed silently (rc 0, other losses);
    after a fallback Lightning wrote last-v1.ckpt beside the broken file."""
    from cli_runs import cli_env, run_train, train_cmd

    env = cli_env(SSR_CACHE=str(tmp_path / "cache"))
    opts = ("method=sft", "data.max_val_rows=0", "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'run'}")
    run_train(*opts, cwd=tmp_path, env=env)  # 8 steps, a checkpoint every 2
    folder = tmp_path / "run" / "checkpoints"
    names = ["last.ckpt", "step2.ckpt", "step4.ckpt", "step6.ckpt", "step8.ckpt"]
    assert sorted(p.name for p in folder.iterdir()) == names
    (folder / "step8.ckpt").unlink()  # last.ckpt is the only copy of step 8
    _overwrite_inside_a_tensor(folder / "last.ckpt")

    # an explicit path to it: one line naming it, exit code 2, nothing touched
    bad = train_cmd(*opts, f"ckpt_path={folder / 'last.ckpt'}")
    proc = subprocess.run(bad, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert errors[0].startswith(f"error: ckpt_path={folder / 'last.ckpt'}: archive member ")
    assert errors[0].endswith("fails its CRC check (damaged on disk)")
    assert (folder / "last.ckpt").is_file()

    proc = run_train(*opts, "ckpt_path=last", cwd=tmp_path, env=env)
    log = proc.stdout + proc.stderr
    assert f"{folder / 'last.ckpt'} is damaged" in log and f"resuming from {folder / 'step6.ckpt'}" in log
    assert sorted(p.name for p in folder.iterdir()) == sorted([*names, "last.ckpt.damaged"])
    last = torch.load(folder / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 8 and damage(folder / "last.ckpt") is None
