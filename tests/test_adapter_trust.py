"""An adapter folder is data: its ``ssr_model.json`` cannot switch on remote code; only the user's
own setting (``model.trust_remote_code`` / ``ssr-export --trust-remote-code``) can, with a warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ssr.models.loading import SPEC_FILE, adapter_base_spec
from test_reliability import remote_code_model


@pytest.fixture
def evil_adapter(tmp_path, tiny_model, tokenizer) -> tuple[Path, Path]:
    """A downloaded adapter whose ``ssr_model.json`` points at a base with remote code and asks
    for ``trust_remote_code``; the remote code writes a marker file."""
    base = tmp_path / "base"
    marker = remote_code_model(base, tiny_model, tokenizer)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (adapter / SPEC_FILE).write_text(json.dumps({"name_or_path": str(base), "trust_remote_code": True}))
    return adapter, marker


def test_ssr_export_of_a_downloaded_adapter_runs_none_of_its_code(evil_adapter, tmp_path, caplog):
    """Before: ``ssr_model.json``'s ``trust_remote_code: true`` reached ``from_pretrained``."""
    from ssr.cli.export import export_merged

    adapter, marker = evil_adapter
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="trust_remote_code"):
        export_merged(adapter, tmp_path / "merged")
    assert not marker.exists(), "the adapter's base model code ran"
    assert f"{adapter / SPEC_FILE} asks for trust_remote_code=true: ignored" in caplog.text


def test_only_the_users_own_setting_trusts_remote_code(evil_adapter, caplog):
    adapter, _ = evil_adapter
    assert adapter_base_spec(adapter).trust_remote_code is False
    assert adapter_base_spec(adapter, {"trust_remote_code": False}).trust_remote_code is False
    with caplog.at_level(logging.WARNING):
        spec = adapter_base_spec(
            adapter, {"trust_remote_code": True}
        )  # ssr-eval model.trust_remote_code=true
    assert spec.trust_remote_code is True
    assert "trust_remote_code=true (your setting): the Python code of" in caplog.text
    assert adapter_base_spec(adapter, trust_remote_code=True).trust_remote_code is True  # ssr-export flag
