"""Wall time of one drift evaluation in 1 process vs N processes sharing it (gloo), on this machine.

    flock /tmp/ssr-heavy.lock python experiments/benchmarks/sharded_eval.py \\
        --out experiments/benchmarks/sharded_eval.json

The evaluation is the main job's per-epoch one at its default settings (conf/eval: the local lm-eval
suite, self-drift 16 prompts x 48 tokens, kl_task 16 training rows, IFEval 8 prompts x 128 tokens,
task metrics on 16 in-domain rows x 48 tokens) of the base model, every cache off (references
generated, nothing reused), run by ``Evaluator.evaluate_base`` inside
:func:`ssr.runtime.distributed.sharding`. Each configuration runs in fresh processes (spawned, a
gloo group for N > 1) with the machine's cores divided among them (torch threads); the JSON keeps
each part's seconds (rank 0's record), the wall time of the whole call, and the per-rank item counts.
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

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]


def _evaluator(data_root: str, tokenizer: Any) -> tuple[Any, list[str], list[Any]]:
    from ssr.data.embedded import generate
    from ssr.data.prompts import PromptConfig, prompt_token_budget
    from ssr.data.tokenize import tokenize_all
    from ssr.eval.evaluator import Evaluator
    from ssr.eval.ifeval import IFEvalConfig
    from ssr.eval.kl_task import KLTaskConfig
    from ssr.eval.self_drift import SelfDriftConfig
    from ssr.eval.suite import SuiteConfig
    from ssr.eval.task_sets import TaskMetricsConfig

    suite = yaml.safe_load((REPO / "conf" / "eval" / "suite" / "local.yaml").read_text())
    prompt, tasks = PromptConfig(), TaskMetricsConfig()
    ev = Evaluator(
        SuiteConfig.from_mapping(suite),
        SelfDriftConfig(cache=False),
        tasks,
        prompt,
        task_sets={"in_domain": generate("test")[: tasks.max_rows]},
        max_prompt_tokens=prompt_token_budget(1024, tasks.max_new_tokens),
        data_root=data_root,
        cache_base=False,
        kl_task=KLTaskConfig(),
        ifeval=IFEvalConfig(cache=False),
    )
    train = generate("train")[: ev.kl_task.cfg.max_rows]  # gold answers stand in for own answers
    rows, _ = tokenize_all(tokenizer, train, [r.gold for r in train], prompt, 1024)
    return ev, [r.id for r in rows], [(r.input_ids, r.labels) for r in rows]


def _worker(rank: int, world: int, port: int, model: str, precision: str, out: str, data_root: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if world > 1:
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
    from ssr.eval.suite import loaded_tasks, task_manager
    from ssr.generation.engine import resolve_engine
    from ssr.models.loading import ModelSpec, load_model
    from ssr.models.logits import pad_token_id
    from ssr.runtime.distributed import Shard, sharding
    from ssr.runtime.precision import autocast_dtype

    net, tokenizer = load_model(ModelSpec(name_or_path=model))
    ev, ids, rows = _evaluator(data_root, tokenizer)
    ev.kl_task.set_rows(ids, rows, pad_token_id(tokenizer))
    # once per process, untimed (a training run pays them once, before its first evaluation):
    # building the lm-eval tasks, the generation engine's probe
    loaded_tasks(task_manager(False, data_root), ev.suite.tasks)
    _ = ev.ifeval.docs
    resolve_engine("auto", net, autocast_dtype(precision, "cpu"), pad_token_id(tokenizer))
    if world > 1:
        torch.distributed.barrier()
    started = time.perf_counter()
    with sharding(Shard.of_process_group()):
        record = ev.evaluate_base(net, tokenizer, precision=precision)
    wall = time.perf_counter() - started
    if rank == 0:
        Path(out).write_text(json.dumps({"wall_s": round(wall, 2), "record": record}, default=str))
    if world > 1:
        torch.distributed.destroy_process_group()


def run(world: int, model: str, precision: str, data_root: str, cache: Path) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = cache / f"world{world}.json"
    args = (world, port, model, precision, str(out), data_root)
    started = time.perf_counter()
    mp.start_processes(_worker, args=args, nprocs=world, start_method="spawn", join=True)
    result = json.loads(out.read_text())
    record = result["record"]
    return {
        "processes": world,
        "threads_per_process": max(1, (os.cpu_count() or 1) // world),
        "evaluate_base_wall_s": result["wall_s"],
        "processes_wall_s": round(time.perf_counter() - started, 2),  # start-up and model load included
        "seconds": record["seconds"],
        "ranks": record.get("ranks"),
        "scores": record["scores"],
        "tasks": record.get("tasks"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--worlds", default="1,2")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from ssr.runtime.hardware import cpu_isa

    data_root = os.environ.get("SSR_DATA_ROOT", str(REPO.parent / "shared" / "data"))
    models = Path(os.environ.get("SSR_CACHE", REPO / ".ssr_cache")) / "models"
    results = []
    for world in (int(w) for w in args.worlds.split(",")):
        with tempfile.TemporaryDirectory() as tmp:  # fresh caches; the converted model linked in
            cache = Path(tmp)
            if models.is_dir():
                (cache / "models").symlink_to(models)
            os.environ["SSR_CACHE"] = str(cache)
            results.append(run(world, args.model, args.precision, data_root, cache))
        print(json.dumps({k: results[-1][k] for k in ("processes", "evaluate_base_wall_s", "seconds")}))
    args.out.write_text(
        json.dumps(
            {
                "model": args.model,
                "precision": args.precision,
                "cpu_count": os.cpu_count(),
                "isa": cpu_isa(),
                "torch": torch.__version__,
                "runs": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
