"""LightningDataModule that performs the judge-driven target selection.

One process: ``prepare_data`` runs generation + judging through the caches and writes
``selection.jsonl``. Several (DDP, DeepSpeed): ``setup`` runs them on every rank, each rank its
share of the rows (:mod:`ssr.runtime.distributed`), and rank 0 writes the file. ``setup`` (every rank)
then reads it, tokenizes with response-only labels and builds length-grouped batches sharded
across data-parallel ranks.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ssr.data.adapters import sample_rows
from ssr.data.prompts import PromptConfig, prompt_token_budget
from ssr.data.records import Record
from ssr.data.tokenize import IGNORE_INDEX, Tokenized, TokenizeReport, check_prompts_fit, tokenize_all
from ssr.generation.config import GeneratorConfig
from ssr.generation.generator import BaseModelGenerator
from ssr.judges.base import Judge
from ssr.models.loading import ModelSpec, load_tokenizer
from ssr.runtime.distributed import Shard, rank_shard, world_size
from ssr.runtime.paths import cache_root
from ssr.selection.methods import MethodConfig, SelectionStats, trained
from ssr.selection.pipeline import answer_prompts, read_selection, run_selection

log = logging.getLogger(__name__)


class _ListDataset(Dataset):
    def __init__(self, rows: list[Tokenized]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Tokenized:
        return self.rows[i]


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar length (less padding), shuffled per epoch, sharded across ranks.

    Every rank gets the same number of batches (the last few are dropped if they do not divide
    evenly), so DDP never waits on a rank that ran out of data.
    """

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        megabatch: int = 32,
    ) -> None:
        self.lengths, self.batch_size, self.shuffle = lengths, batch_size, shuffle
        self.seed, self.rank, self.world_size, self.megabatch = seed, rank, world_size, megabatch
        self.epoch = 0
        self.start = 0  # batches of this epoch to skip on the next iteration (a resumed epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        idx = list(range(len(self.lengths)))
        rng = random.Random(self.seed + self.epoch)
        if self.shuffle:
            rng.shuffle(idx)
        size = self.batch_size * self.megabatch
        batches = []
        for start in range(0, len(idx), size):
            chunk = sorted(idx[start : start + size], key=lambda i: -self.lengths[i])
            batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        usable = len(batches) - len(batches) % self.world_size if len(batches) >= self.world_size else 0
        return batches[:usable][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        start, self.start = self.start, 0
        return iter(self._batches()[start:])

    def __len__(self) -> int:
        n = -(-len(self.lengths) // self.batch_size)
        return (n - n % self.world_size) // self.world_size if n >= self.world_size else 0


class ResumableDataLoader(DataLoader):
    """The train loader: reshuffles every epoch and resumes inside an interrupted epoch.

    Lightning stores ``state_dict()`` (epoch, batches trained) in every checkpoint and, resuming
    inside an epoch, calls ``load_state_dict()`` before iterating; the epoch then goes on with the
    batches the interrupted run had not trained on, in the same order (a plain DataLoader would start
    the epoch over and never reach its last batches). ``epoch_fn`` gives the current epoch:
    Lightning's ``set_epoch`` only reaches ``loader.sampler`` and ``batch_sampler.sampler``.
    """

    epoch_fn: Callable[[], int] | None = None
    _resume: tuple[int, int] | None = None
    _position: tuple[int, int] = (0, 0)

    def __iter__(self) -> Iterator[Any]:
        sampler = self.batch_sampler
        if self.epoch_fn is not None:
            sampler.set_epoch(self.epoch_fn())
        done = 0
        if self._resume is not None and self._resume[0] == sampler.epoch:
            done = self._resume[1]
        self._resume = None
        sampler.start = done
        self._position = (sampler.epoch, done)
        for batch in super().__iter__():
            done += 1
            self._position = (sampler.epoch, done)  # counted when handed to the training step
            yield batch

    def state_dict(self) -> dict[str, int]:
        epoch, done = self._position
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches_done"]))


def collate(rows: list[Tokenized], pad_id: int, packing: bool = False) -> dict[str, Any]:
    """Right-pad a batch (or pack it, see :func:`collate_packed`); token counts travel as Python ints."""
    if packing:
        return collate_packed(rows)
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "num_tokens": sum(len(r.input_ids) for r in rows),
        "num_response_tokens": sum(r.num_response_tokens for r in rows),
    }


def collate_packed(rows: list[Tokenized]) -> dict[str, Any]:
    """Padding-free batch: all rows concatenated into one sequence of shape (1, total tokens).

    ``position_ids`` restart at 0 for every row and ``attention_mask`` is None, so transformers
    builds a block-diagonal causal mask (sdpa/eager; CPU and GPU) or runs variable-length kernels
    (``flash_attention_2``, GPU): no row attends to another. The first label of every row is
    ignored, so no row learns to predict the next row's first token.
    """
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for r in rows:
        ids += r.input_ids
        labels += [IGNORE_INDEX, *r.labels[1:]]
        positions += range(len(r.input_ids))
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "attention_mask": None,
        "num_tokens": len(ids),
        "num_response_tokens": sum(x != IGNORE_INDEX for x in labels),
    }


class SSRDataModule(L.LightningDataModule):
    """Records in, mixed self/gold training batches out (``conf/data/_base.yaml`` builds it).

    ``train``/``val``: the adapters' records, sampled here (``max_*_rows``, ``balance``, with
    ``sample_seed`` or else the run ``seed``); ``ood``: held-out record sets for the task metrics.
    """

    def __init__(
        self,
        train: list[Record],
        model: ModelSpec,
        method: MethodConfig,
        prompt: PromptConfig,
        generator: GeneratorConfig,
        run_dir: str,
        judge: Judge | None = None,
        val: list[Record] | None = None,
        ood: dict[str, list[Record]] | None = None,
        max_train_rows: int | None = None,
        max_val_rows: int | None = 0,
        balance: bool = False,
        sample_seed: int | None = None,
        max_length: int = 1024,
        batch_size: int = 8,
        val_batch_size: int | None = 16,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        prepare_data_per_node: bool = False,
        packing: bool = False,
    ) -> None:
        super().__init__()
        if method.needs_judge and judge is None:
            raise ValueError(f"method={method.name} needs a judge: set judge=rule_qa|hf|openai")
        rows_seed = seed if sample_seed is None else sample_seed
        self.train_records = sample_rows(train, max_train_rows, balance, rows_seed)
        self.val_records = sample_rows(val or [], max_val_rows, balance, rows_seed)
        self.ood = dict(ood or {})
        self.spec, self.method, self.prompt, self.judge = model, method, prompt, judge
        if generator.max_prompt_tokens is None:  # own answers must fit training's max_length
            budget = prompt_token_budget(max_length, generator.decoding.max_new_tokens)
            generator = replace(generator, max_prompt_tokens=budget)
        self.generator_cfg = generator
        self.run_dir = Path(run_dir)
        self.max_length, self.batch_size = max_length, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.packing = packing
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root()
        self.prepare_data_per_node = prepare_data_per_node
        self.tokenizer = load_tokenizer(self.spec)
        self.stats: SelectionStats | None = None
        self.tokenize_report: TokenizeReport | None = None
        self.train_rows: list[Tokenized] = []
        self.val_rows: list[Tokenized] = []
        self._train_loader: ResumableDataLoader | None = None
        self._resume_position: dict[str, int] | None = None

    @property
    def selection_path(self) -> Path:
        return self.run_dir / "selection.jsonl"

    def base_generator(self) -> BaseModelGenerator:
        """The base model's generator (own answers, rewrites) through the shared cache."""
        return BaseModelGenerator(self.spec, self.generator_cfg, self.cache_dir)

    def own_answer_rows(self, max_rows: int | None) -> tuple[list[str], list[tuple[list[int], list[int]]]]:
        """The base model's own answers to the first ``max_rows`` training prompts, tokenized as
        training tokenizes a target: what the evaluation's ``kl_task`` scores. Through the
        generation cache: nothing is generated where the selection stage already wrote them."""
        records = self.train_records[:max_rows] if max_rows else self.train_records
        with self.base_generator() as generator:
            prompts = answer_prompts(
                generator.tokenizer, records, self.prompt, generator.cfg.max_prompt_tokens
            )
            answers, _ = generator.generate(prompts)
        rows, _ = tokenize_all(self.tokenizer, records, answers, self.prompt, self.max_length)
        return [r.id for r in rows], [(r.input_ids, r.labels) for r in rows]

    def prepare_data(self) -> None:
        """The selection in a one-process run (Lightning calls this on rank 0 alone, after the
        process group of a multi-process run exists: that one selects in :meth:`setup`)."""
        if world_size() == 1:
            self.select()

    def select(self, shard: Shard | None = None) -> None:
        """Generation, judging and ``selection.jsonl`` (with a ``shard``: this rank's share)."""
        check_prompts_fit(self.tokenizer, self.train_records, self.prompt, self.max_length)
        generator = self.base_generator() if self.method.needs_judge else None
        _, self.stats, _ = run_selection(
            self.train_records,
            self.method,
            self.prompt,
            generator,
            self.judge,
            self.cache_dir,
            self.run_dir,
            shard,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows:
            return
        if world_size() > 1:  # every rank takes part in the selection, then reads it
            with rank_shard() as shard:
                self.select(shard)
        by_id = {r.id: r for r in self.train_records}
        selections = read_selection(self.selection_path)
        missing = [s.id for s in selections if s.id not in by_id]
        if missing or len(selections) != len(by_id):
            raise RuntimeError(
                f"{self.selection_path} does not match the training records "
                f"({len(selections)} selections, {len(by_id)} records, unknown ids {missing[:3]}); "
                "delete it to rebuild"
            )
        kept = trained(selections)  # method=self_only drops the rows whose own answer was rejected
        records = [by_id[s.id] for s in kept]
        self.train_rows, self.tokenize_report = tokenize_all(
            self.tokenizer, records, [s.target for s in kept], self.prompt, self.max_length
        )
        if self.val_records:
            self.val_rows, _ = tokenize_all(
                self.tokenizer,
                self.val_records,
                [r.gold for r in self.val_records],
                self.prompt,
                self.max_length,
            )
        log.info(
            "train rows: %d (%d documents truncated, %d dropped); val rows: %d",
            len(self.train_rows),
            self.tokenize_report.truncated,
            len(self.tokenize_report.dropped),
            len(self.val_rows),
        )

    def _loader(self, rows: list[Tokenized], batch_size: int, shuffle: bool) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer else 0
        world = self.trainer.world_size if self.trainer else 1
        epoch_seed = self.seed
        sampler = LengthGroupedBatchSampler(
            [len(r.input_ids) for r in rows], batch_size, shuffle, epoch_seed, rank, world
        )
        pad = self.tokenizer.pad_token_id
        # A private generator: by default every new loader iterator draws its base seed from
        # torch's global RNG, which shifts the dropout masks of all later steps, and a resumed
        # run creates its iterators at other points than the run it continues.
        return (ResumableDataLoader if shuffle else DataLoader)(
            _ListDataset(rows),
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=partial(collate, pad_id=pad, packing=self.packing),
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_rows, self.batch_size, shuffle=True)
        loader.epoch_fn = lambda: self.trainer.current_epoch if self.trainer else 0
        if self._resume_position is not None:
            loader.load_state_dict(self._resume_position)
            self._resume_position = None
        self._train_loader = loader
        return loader

    # Lightning builds the train loader (to count steps for the LR schedule) *before* it restores a
    # checkpoint's loop state, and then never hands that state to the loader: the position inside
    # the epoch travels as DataModule state instead, which is restored in time.
    def state_dict(self) -> dict[str, Any]:
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        position = state.get("train_loader")
        if position is None:
            return
        if self._train_loader is not None:
            self._train_loader.load_state_dict(position)
        else:
            self._resume_position = position

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_rows, self.val_batch_size, shuffle=False) if self.val_rows else []
