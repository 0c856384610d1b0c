"""Offline documents for the ``ssr_*`` lm-eval tasks, in the schema of lm-eval's hub datasets.

Each public ``load_*`` function is an lm-eval ``custom_dataset``: lm-eval calls it with the task's
metadata and ``dataset_kwargs`` as keyword arguments and expects a ``DatasetDict`` whose split
names match the task YAML. Files are read from ``data_root`` (passed as metadata) or the env
``SSR_DATA_ROOT`` (layout of ``shared/data``; see each folder's SOURCE.md).

Because the docs are converted to the hub schema (``question``/``choices.text``/``answerKey`` for
ARC, ``goal``/``sol1``/``sol2``/``label`` for PIQA, ...), the task YAMLs can copy the prompt
templates of lm-eval's own hub tasks verbatim.
"""

from __future__ import annotations

import bz2
import csv
import json
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import datasets

from ssr.runtime.paths import data_root as env_data_root

Doc = dict[str, Any]

MMLU_SUBJECTS: tuple[str, ...] = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics", "econometrics",
    "electrical_engineering", "elementary_mathematics", "formal_logic", "global_facts",
    "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics",
    "high_school_physics", "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law", "jurisprudence",
    "logical_fallacies", "machine_learning", "management", "marketing", "medical_genetics",
    "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy", "prehistory",
    "professional_accounting", "professional_law", "professional_medicine", "professional_psychology",
    "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)  # fmt: skip


class LocalDataError(ValueError):
    """A data file does not have the documented format."""


def resolve_data_root(data_root: str | Path | None = None) -> Path:
    root = Path(data_root).expanduser() if data_root else env_data_root()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} is not a directory")
    return root


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (is SSR_DATA_ROOT the offline data folder?)")
    return path


def _key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=32)
def _cached(kind: str, key: tuple[str, int, int], subject: str = "") -> tuple[Doc, ...]:
    return tuple(_PARSERS[kind](Path(key[0]), subject))


def _docs(kind: str, path: Path, subject: str = "") -> list[Doc]:
    """Parsed docs of one file, cached per (file, mtime, size); callers get fresh copies."""
    return [dict(doc) for doc in _cached(kind, _key(_require(path)), subject)]


def _jsonl_rows(path: Path, required: tuple[str, ...]) -> list[tuple[int, Doc]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise LocalDataError(f"{path}:{lineno}: invalid JSON ({err})") from err
            missing = [k for k in required if k not in row]
            if missing:
                raise LocalDataError(f"{path}:{lineno}: missing keys {missing}")
            rows.append((lineno, row))
    return rows


def _strip_prefix(text: str, prefix: str, where: str) -> str:
    if not text.startswith(prefix):
        raise LocalDataError(f"{where}: expected text to start with {prefix!r}, got {text[:40]!r}")
    return text[len(prefix) :]


def _gold(row: Doc, n_choices: int, where: str) -> int:
    gold = row["gold"]
    if not isinstance(gold, int) or not 0 <= gold < n_choices:
        raise LocalDataError(f"{where}: gold {gold!r} is not an index into {n_choices} choices")
    return gold


# --- converters: one llm-foundry / text row -> one hub-schema doc ---------------------------------


def _parse_arc(path: Path, _: str = "") -> list[Doc]:
    """llm-foundry ``{"query": "Question: <q>", "choices": [...], "gold": i}`` -> allenai/ai2_arc."""
    docs = []
    for lineno, row in _jsonl_rows(path, ("query", "choices", "gold")):
        where = f"{path}:{lineno}"
        labels = [chr(ord("A") + i) for i in range(len(row["choices"]))]
        docs.append(
            {
                "id": f"{path.stem}-{lineno}",
                "question": _strip_prefix(row["query"], "Question: ", where),
                "choices": {"text": list(row["choices"]), "label": labels},
                "answerKey": labels[_gold(row, len(labels), where)],
            }
        )
    return docs


def _parse_piqa(path: Path, _: str = "") -> list[Doc]:
    """llm-foundry ``{"query": "Question: <goal>\\n", "choices": [sol1, sol2], "gold"}`` -> baber/piqa."""
    docs = []
    for lineno, row in _jsonl_rows(path, ("query", "choices", "gold")):
        where = f"{path}:{lineno}"
        goal = _strip_prefix(row["query"], "Question: ", where)
        if not goal.endswith("\n") or len(row["choices"]) != 2:
            raise LocalDataError(f"{where}: expected 'Question: <goal>\\n' and two choices")
        sol1, sol2 = row["choices"]
        docs.append({"goal": goal[:-1], "sol1": sol1, "sol2": sol2, "label": _gold(row, 2, where)})
    return docs


def _parse_boolq(path: Path, _: str = "") -> list[Doc]:
    """llm-foundry ``{"query": "Passage: <p>\\nQuestion: <q>?", "choices": ["no","yes"], "gold"}``
    -> super_glue/boolq (``passage``, ``question`` without the appended "?", ``label``).

    The hub passages start with "<Wikipedia title> -- "; this file dropped the title, so BoolQ
    prompts here lack that prefix (the only known difference from lm-eval's ``boolq``).
    """
    docs = []
    for lineno, row in _jsonl_rows(path, ("query", "choices", "gold")):
        where = f"{path}:{lineno}"
        if list(row["choices"]) != ["no", "yes"]:
            raise LocalDataError(f"{where}: expected choices ['no', 'yes'], got {row['choices']}")
        body = _strip_prefix(row["query"], "Passage: ", where)
        passage, sep, question = body.rpartition("\nQuestion: ")
        if not sep or not question.endswith("?"):
            raise LocalDataError(f"{where}: expected 'Passage: ...\\nQuestion: ...?'")
        docs.append({"passage": passage, "question": question[:-1], "label": _gold(row, 2, where)})
    return docs


# Lower-case start of the last sentence fragment: HellaSwag's ctx_b, which lm-eval capitalises.
_CTX_B = re.compile(r"(?<=[.!?] )([a-z])(?=[^.!?]*$)")


def _hellaswag_query(text: str) -> str:
    """Approximate lm-eval's ``activity_label: ctx_a + " " + ctx_b.capitalize()``.

    The text file joins ctx_a and ctx_b, so ctx_b cannot be recovered exactly. For ActivityNet
    items (about a third) ctx_b is the lower-case fragment after the last sentence end, which is
    upper-cased here as ``str.capitalize`` does to its first letter.
    """
    from lm_eval.tasks.hellaswag.utils import preprocess

    return preprocess(_CTX_B.sub(lambda m: m.group(1).upper(), text))


def _parse_hellaswag(path: Path, _: str = "") -> list[Doc]:
    """llama.cpp's 6-lines-per-item text (context, gold, 4 endings) -> lm-eval's processed docs."""
    from lm_eval.tasks.hellaswag.utils import preprocess

    with bz2.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise LocalDataError(f"{path}: {len(lines)} lines is not a multiple of 6")
    docs = []
    for start in range(0, len(lines), 6):
        ctx, label, *endings = lines[start : start + 6]
        if label.strip() not in {"0", "1", "2", "3"}:
            raise LocalDataError(f"{path}:{start + 2}: gold label {label!r} is not 0-3")
        docs.append(
            {
                "query": _hellaswag_query(ctx),
                "choices": [preprocess(e) for e in endings],
                "gold": int(label),
                "label": label.strip(),
            }
        )
    return docs


def _parse_truthfulqa(path: Path, _: str = "") -> list[Doc]:
    """TruthfulQA v1 ``mc_task.json`` ({answer: 0/1} dicts) -> truthful_qa/multiple_choice."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LocalDataError(f"{path}: invalid JSON ({err})") from err
    docs = []
    for i, row in enumerate(rows):
        where = f"{path}[{i}]"
        doc: Doc = {"question": row.get("question")}
        for key in ("mc1_targets", "mc2_targets"):
            targets = row.get(key)
            if not isinstance(targets, dict) or not targets:
                raise LocalDataError(f"{where}: {key} must be a non-empty {{answer: 0/1}} object")
            doc[key] = {"choices": list(targets), "labels": [int(v) for v in targets.values()]}
        if not doc["question"] or doc["mc1_targets"]["labels"][0] != 1:
            raise LocalDataError(f"{where}: needs a question and the true MC1 answer first")
        docs.append(doc)
    return docs


def _parse_mmlu(path: Path, subject: str) -> list[Doc]:
    """CSV with header ``question,choice0..choice3,answer`` (answer 0-3) -> cais/mmlu."""
    docs = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        expected = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
        if reader.fieldnames != expected:
            raise LocalDataError(f"{path}: header {reader.fieldnames} != {expected}")
        for lineno, row in enumerate(reader, 2):
            answer = row["answer"]
            if answer not in {"0", "1", "2", "3"}:
                raise LocalDataError(f"{path}:{lineno}: answer {answer!r} is not 0-3")
            choices = [row[f"choice{i}"] for i in range(4)]
            docs.append(
                {"question": row["question"], "subject": subject, "choices": choices, "answer": int(answer)}
            )
    return docs


def _parse_gsm8k(path: Path, _: str = "") -> list[Doc]:
    """openai/grade-school-math JSONL (``question``, ``answer``): already the hub schema."""
    return [
        {"question": row["question"], "answer": row["answer"]}
        for _, row in _jsonl_rows(path, ("question", "answer"))
    ]


def _parse_ifeval(path: Path, _: str = "") -> list[Doc]:
    """google-research IFEval ``input_data.jsonl`` -> google/IFEval (``key``, ``prompt``,
    ``instruction_id_list``, ``kwargs``: one argument object per instruction, ``{}`` for none).
    lm-eval's checkers drop empty arguments, so the schema's union of keys (missing ones null) is
    scored as the sparse original."""
    docs = []
    for lineno, row in _jsonl_rows(path, ("key", "prompt", "instruction_id_list", "kwargs")):
        ids, kwargs = row["instruction_id_list"], row["kwargs"]
        if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs) or not ids:
            raise LocalDataError(
                f"{path}:{lineno}: instruction_id_list and kwargs must be lists of the same, non-zero length"
            )
        if not all(isinstance(k, dict) for k in kwargs):
            raise LocalDataError(f"{path}:{lineno}: every kwargs entry must be an object")
        docs.append({key: row[key] for key in ("key", "prompt", "instruction_id_list", "kwargs")})
    return docs


_PARSERS: dict[str, Callable[[Path, str], list[Doc]]] = {
    "arc": _parse_arc,
    "piqa": _parse_piqa,
    "boolq": _parse_boolq,
    "hellaswag": _parse_hellaswag,
    "truthfulqa": _parse_truthfulqa,
    "mmlu": _parse_mmlu,
    "gsm8k": _parse_gsm8k,
    "ifeval": _parse_ifeval,
}


# --- lm-eval custom_dataset entry points --------------------------------------------------------


def _dataset(splits: dict[str, list[Doc]]) -> datasets.DatasetDict:
    return datasets.DatasetDict({name: datasets.Dataset.from_list(docs) for name, docs in splits.items()})


def load_arc_easy(data_root: str | None = None, **_: Any) -> datasets.DatasetDict:
    return _dataset({"test": _docs("arc", resolve_data_root(data_root) / "arc" / "arc_easy.jsonl")})


def load_arc_challenge(data_root: str | None = None, **_: Any) -> datasets.DatasetDict:
    return _dataset({"test": _docs("arc", resolve_data_root(data_root) / "arc" / "arc_challenge.jsonl")})


def load_piqa(data_root: str | None = None, **_: Any) -> datasets.DatasetDict:
    return _dataset({"validation": _docs("piqa", resolve_data_root(data_root) / "piqa" / "piqa.jsonl")})


def load_boolq(data_root: str | None = None, **_: Any) -> datasets.DatasetDict:
    return _dataset({"validation": _docs("boolq", resolve_data_root(data_root) / "boolq" / "boolq.jsonl")})


def load_hellaswag(data_root: str | None = None, **_: Any) -> datasets.DatasetDict:
    path = resolve_data_root(data_root) / "hellaswag" / "hellaswag_val_full.txt.bz2"
    return _dataset({"validation": _docs("hellaswag", path)})


def load_truthfulqa(data_root: str | None = None, **_: Any) -> datasets.DatasetDict:
    path = resolve_data_root(data_root) / "truthfulqa" / "v1" / "mc_task.json"
    return _dataset({"validation": _docs("truthfulqa", path)})


def load_mmlu(subject: str, data_root: str | None = None, **_: Any) -> datasets.DatasetDict:
    if subject not in MMLU_SUBJECTS:
        raise KeyError(f"unknown MMLU subject {subject!r}")
    root = resolve_data_root(data_root) / "mmlu"
    return _dataset(
        {
            "test": _docs("mmlu", root / "test" / f"{subject}_test.csv", subject),
            "dev": _docs("mmlu", root / "dev" / f"{subject}_dev.csv", subject),
        }
    )


def load_gsm8k(data_root: str | None = None, **_: Any) -> datasets.DatasetDict:
    root = resolve_data_root(data_root) / "gsm8k"
    return _dataset(
        {"test": _docs("gsm8k", root / "test.jsonl"), "train": _docs("gsm8k", root / "train.jsonl")}
    )


def load_ifeval(data_root: str | None = None, **_: Any) -> datasets.DatasetDict:
    return _dataset({"train": _docs("ifeval", resolve_data_root(data_root) / "ifeval" / "input_data.jsonl")})
