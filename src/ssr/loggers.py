"""A CSV logger that keeps an interrupted run's metrics when the run resumes in the same directory."""

from __future__ import annotations

import csv
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _KeepingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing metrics.csv. This one keeps its rows and, on the first
    save, drops only those from steps this run logs again (done after the checkpoint it resumed
    from), so every step appears once."""

    def _check_log_dir_exists(self) -> None:
        self._merged = False

    def save(self) -> None:
        if not self.metrics:
            return
        if not self._merged and self._fs.isfile(self.metrics_file_path):
            first = min(int(m["step"]) for m in self.metrics)
            with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                reader = csv.DictReader(fh)
                header = list(reader.fieldnames or [])
                kept = [r for r in reader if _step(r) is not None and _step(r) < first]
            self.metrics_keys = sorted(set(header) | set(self.metrics_keys))
            with self._fs.open(self.metrics_file_path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
        self._merged = True
        super().save()


def _step(row: dict[str, Any]) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


class ResumableCSVLogger(CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` that appends to the run's metrics.csv on resume."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment
