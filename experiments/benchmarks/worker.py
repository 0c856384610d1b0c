"""Run one benchmark task in this process: ``python worker.py TASK ARGS_JSON OUT_JSON``.

The orchestrator (run_all.py) starts every task in its own process so that each one's peak RSS
(``ru_maxrss``) belongs to that task alone.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
import warnings

from common import loadavg


def main() -> None:
    task, args_json, out_path = sys.argv[1:4]
    args = json.loads(args_json)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    for name in ("lightning", "lightning.pytorch", "transformers", "ssr", "trl", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import torch

    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    from micro import TASKS
    from train_contenders import CONTENDERS

    fn = CONTENDERS.get(task.removeprefix("train_")) if task.startswith("train_") else TASKS[task]
    load0, t0 = loadavg(), time.perf_counter()
    result = fn(args)
    result.update(
        task=task,
        args=args,
        process_wall_s=time.perf_counter() - t0,
        loadavg_start=load0,
        loadavg_end=loadavg(),
        self_maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        torch_threads=torch.get_num_threads(),
    )
    with open(out_path, "w") as fh:
        json.dump(result, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
