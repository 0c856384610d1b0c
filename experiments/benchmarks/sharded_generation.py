"""Wall time of the selection stage (own answers + judging) in 1 process vs N gloo processes.

The README main job's data and model (64 embedded rows, SmolLM2-135M-Instruct, 64 new tokens,
generator batch 32) with a fresh generation cache per run; one process runs
``SSRDataModule.prepare_data`` (no process group), N processes run ``setup`` in a gloo group as
Lightning's DDP does, each generating its share. Each process gets ``cores // N`` torch threads.

    flock /tmp/ssr-heavy.lock python experiments/benchmarks/sharded_generation.py --out RESULT.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from common import shipped


def _select(rank: int, world: int, port: int, overrides: list[str], out: str) -> None:
    """One process: build the main job's data module, time the selection, write the timings."""
    from omegaconf import open_dict

    from ssr.cli._hydra import build, resolve_precision
    from ssr.runtime.hardware import configure_threads

    threads = configure_threads(world)
    cfg = shipped(*overrides)
    resolve_precision(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(out) / "run")
    if world > 1:
        import torch.distributed as dist

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    dm = build(cfg.data)
    t0 = time.perf_counter()
    if world > 1:
        dm.setup("fit")
    else:
        dm.prepare_data()
    seconds = time.perf_counter() - t0
    result = {"rank": rank, "threads": threads, "select_s": seconds, "stages": dm.stats.extra["stages"]}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


def measure(world: int, overrides: list[str]) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        cache = [f"paths.cache_dir={tmp}/cache"]
        t0 = time.perf_counter()
        mp.spawn(_select, args=(world, port, [*overrides, *cache], tmp), nprocs=world)
        wall = time.perf_counter() - t0
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    return {
        "processes": world,
        "wall_s_with_startup": round(wall, 2),
        "select_s": round(max(r["select_s"] for r in ranks), 2),
        "generate_self_s": ranks[0]["stages"]["generate_self"]["seconds"],
        "generate_self_by_rank": ranks[0]["stages"]["generate_self"].get("computed_by_rank"),
        "threads_per_process": ranks[0]["threads"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (1, 2, 1, 2, ...)")
    parser.add_argument("--override", action="append", default=[], help="a config override (repeatable)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = [measure(n, args.override) for _ in range(args.rounds) for n in args.processes]
    cpu = sorted(set(Path("/proc/cpuinfo").read_text().split()) & {"avx2", "avx512_bf16", "amx_bf16"})
    result = {"overrides": args.override, "cpu_flags": cpu, "cores": os.cpu_count(), "runs": runs}
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
