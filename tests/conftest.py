"""Shared fixtures: offline env, the real SmolLM2 tokenizer, tiny random models, composed configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("SSR_CACHE", str(REPO / ".ssr_cache"))
os.environ.setdefault("SSR_DATA_ROOT", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (and chat template), from the embedded GGUF."""
    from ssr.models.loading import ModelSpec, load_tokenizer

    return load_tokenizer(ModelSpec(name_or_path="tiny-random"))


@pytest.fixture
def tiny_model(tokenizer):
    from ssr.models.loading import tiny_random_model

    return tiny_random_model(tokenizer, seed=0)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ["SSR_DATA_ROOT"])
    if not root.is_dir():
        pytest.skip(f"offline data not found at {root}")
    return root


def compose(overrides: list[str] | None = None, config_name: str = "train"):
    """Compose the real Hydra config tree with overrides (and a run dir for ${hydra:...})."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ssr.cli._hydra import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides or [], return_hydra_config=True)


# A fast end-to-end run: tiny random model, 16 embedded rows, 1 epoch (also used on the CLI).
TINY_OVERRIDES = (
    "model=tiny_random",
    "trainer.max_epochs=1",
    "data.max_train_rows=16",
    "data.max_val_rows=8",
    "data.batch_size=4",
    "generator.decoding.max_new_tokens=8",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "trainer.enable_progress_bar=false",
    "eval.callback.enabled=false",  # drift evaluation has its own tests (test_eval_*, test_train)
)


@pytest.fixture
def tiny_cfg(tmp_path):
    """A fast end-to-end config: tiny random model, 16 embedded rows, private caches."""

    def make(*overrides: str):
        from omegaconf import open_dict

        cfg = compose([*TINY_OVERRIDES, *overrides])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.cache_dir = str(tmp_path / "cache")
            del cfg["hydra"]
        return cfg

    return make


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if a mistake is caught only after a tokenizer or model was loaded."""
    import ssr.generation.generator
    import ssr.models.loading
    import ssr.training.datamodule

    def forbidden(*args, **kwargs):
        raise AssertionError("the config error must be raised before any model or tokenizer is loaded")

    for module, name in [
        (ssr.models.loading, "load_model"),
        (ssr.training.datamodule, "load_tokenizer"),
        (ssr.generation.generator, "load_model"),  # BaseModelGenerator
        (ssr.generation.generator, "load_tokenizer"),
    ]:
        monkeypatch.setattr(module, name, forbidden)
