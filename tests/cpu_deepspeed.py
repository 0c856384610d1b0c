"""`CPUDeepSpeedStrategy` (test-only): Lightning's DeepSpeed strategy without its CUDA-only checks,
so the real ZeRO code paths run on CPU processes over gloo (in-process and on the CLI)."""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """DeepSpeedStrategy without Lightning's CUDA-only checks (DeepSpeed itself runs on CPU + gloo)."""

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", 0)  # DeepSpeed wants a device index

    def setup_environment(self) -> None:
        super(DeepSpeedStrategy, self).setup_environment()

    def setup_distributed(self) -> None:
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()


def cpu_deepspeed(option: str) -> tuple[str, ...]:
    """Overrides that run ``trainer=<option>`` on CPU processes over gloo."""
    return (
        f"trainer={option}",
        "trainer.accelerator=cpu",
        "+trainer.strategy.process_group_backend=gloo",
        f"trainer.strategy._target_={__name__}.CPUDeepSpeedStrategy",
    )
