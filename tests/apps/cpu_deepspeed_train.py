"""`ssr-train` with DeepSpeed on CPU processes (gloo), for multi-process ZeRO tests on the CLI.

    python tests/apps/cpu_deepspeed_train.py trainer=deepspeed_zero3 trainer.devices=2 \\
        trainer.accelerator=cpu +trainer.strategy.process_group_backend=gloo \\
        trainer.strategy._target_=cpu_deepspeed.CPUDeepSpeedStrategy ...

The preflight's CUDA check is lifted (`hardware.cuda_available`); Lightning starts the other ranks by
re-running this script with the same arguments.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: cpu_deepspeed

from ssr.cli.train import main
from ssr.runtime import hardware

hardware.cuda_available = lambda: True

if __name__ == "__main__":
    main()
