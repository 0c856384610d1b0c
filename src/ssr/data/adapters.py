"""Dataset adapters: SQuAD 2.0, QuAC, your JSONL, hub datasets, the embedded set -> Records.

JSONL and hub rows go through the one row normaliser, ``ssr.data.formats``.

Every adapter validates its rows: a bad row raises ``DataError`` naming the file, row and field,
or, with ``on_error="skip"``, is skipped and counted (``LoadReport``).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ssr.data.embedded import generate
from ssr.data.formats import (
    DataError,
    RowFields,
    check_unicode,
    optional_bool,
    optional_id,
    require_str,
    row_to_record,
)
from ssr.data.prompts import DEFAULT_UNANSWERABLE
from ssr.data.records import Record
from ssr.data.textmatch import normalize_answer
from ssr.runtime.hashing import content_hash

__all__ = ["DataError", "LoadReport", "embedded_grounded_qa", "hub", "jsonl", "quac", "squad_v2", "subsample"]

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    source: str
    rows: int = 0
    skipped: list[str] = field(default_factory=list)


def _bad(message: str) -> Callable[[], Record]:
    """A row thunk that fails (a malformed container, reported like a malformed row)."""

    def fail() -> Record:
        raise DataError(message)

    return fail


def _collect(rows: Iterable[tuple[str, Callable[[], Record]]], source: str, on_error: str) -> list[Record]:
    """Build records from (location, thunk) pairs applying the error policy and the duplicate-id check."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    report = LoadReport(source)
    seen: dict[str, str] = {}
    out = []
    for where, make in rows:
        try:
            record = make()
            if record.id in seen:
                raise DataError(f"{where}: duplicate id {record.id!r} (first at {seen[record.id]})")
        except DataError as err:
            if on_error == "raise":
                raise
            report.skipped.append(str(err))
            continue
        seen[record.id] = where
        out.append(record)
    report.rows = len(out)
    if report.skipped:
        log.warning(
            "%s: skipped %d bad rows (on_error=skip), first: %s",
            source,
            len(report.skipped),
            report.skipped[0],
        )
    if not out:
        raise DataError(f"{source}: no usable rows")
    return out


def _open_data_file(path: Path) -> Any:
    """``open(path, "rb")``; a file that cannot be opened is a ``DataError`` naming the path
    (``FileNotFoundError``'s repr, which Hydra shows, names only the errno)."""
    try:
        return open(path, "rb")
    except FileNotFoundError as err:
        raise DataError(f"{path}: no such file") from err
    except IsADirectoryError as err:
        raise DataError(f"{path}: is a directory, not a data file") from err
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from err


def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, parsed row); undecodable or invalid lines raise inside the thunk."""
    with _open_data_file(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            yield f"{path}:{lineno}", raw


def _parse_json_line(raw: bytes, where: str) -> dict[str, Any]:
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{where}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: invalid JSON ({err.msg})") from err
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def _load_json_file(path: Path) -> Any:
    try:
        with _open_data_file(path) as fh:
            return json.loads(fh.read().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON at line {err.lineno} ({err.msg})") from err


def article_split(title: str, split: str, test_fraction: float, seed: int) -> bool:
    """Deterministic split by article so no document lands in both train and test."""
    bucket = int(content_hash("article", title, seed)[:8], 16) / 0xFFFFFFFF
    return (bucket < test_fraction) == (split == "test")


def squad_v2(
    path: str,
    split: str = "all",
    test_fraction: float = 0.3,
    seed: int = 0,
    unanswerable_sentence: str = DEFAULT_UNANSWERABLE,
    on_error: str = "raise",
    unanswerables: str = "original",
    swap_share: float = 0.5,
) -> list[Record]:
    """SQuAD 2.0 JSON; ``split`` train/test/all partitions by article title.

    ``unanswerables``: ``original`` keeps SQuAD 2.0's own (written adversarially to look
    answerable); ``swapped`` drops them and makes ``swap_share`` of the answerable questions
    unanswerable by pairing each with a passage of another article of the same split that holds
    none of its answers (:func:`swapped_unanswerables`: the construction of the paper's NQ variant,
    learnable by a small model)."""
    if unanswerables not in UNANSWERABLES:
        raise ValueError(f"unanswerables={unanswerables!r}; valid choices: {', '.join(UNANSWERABLES)}")
    if unanswerables == "swapped":
        kept = squad_v2(path, split, test_fraction, seed, unanswerable_sentence, on_error)
        answerable = [r for r in kept if r.answerable]
        return swapped_unanswerables(answerable, swap_share, seed, unanswerable_sentence)
    file = Path(path)
    data = _load_json_file(file)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{file}: expected a SQuAD JSON object with a 'data' list")

    def rows() -> Iterator[tuple[str, Callable[[], Record]]]:
        for a, article in enumerate(data["data"]):
            where_a = f"{file}: data[{a}]"
            if not isinstance(article, dict) or not isinstance(article.get("paragraphs", []), list):
                yield where_a, _bad(f"{where_a}: expected an object with a 'paragraphs' list")
                continue
            title = str(article.get("title", a))
            if split != "all" and not article_split(title, split, test_fraction, seed):
                continue
            for p, para in enumerate(article.get("paragraphs", [])):
                where_p = f"{where_a}.paragraphs[{p}]"
                if not isinstance(para, dict) or not isinstance(para.get("qas", []), list):
                    yield where_p, _bad(f"{where_p}: expected an object with a 'qas' list")
                    continue
                for q, qa in enumerate(para.get("qas", [])):
                    where = f"{where_p}.qas[{q}]"
                    if not isinstance(qa, dict):
                        yield where, _bad(f"{where}: expected an object, got {type(qa).__name__}")
                        continue
                    yield (
                        where,
                        (
                            lambda qa=qa, para=para, where=where, title=title: _squad_record(
                                qa, para, where, title, unanswerable_sentence
                            )
                        ),
                    )

    return _collect(rows(), str(file), on_error)


UNANSWERABLES = ("original", "swapped")


def swapped_unanswerables(
    records: list[Record], share: float, seed: int, unanswerable_sentence: str = DEFAULT_UNANSWERABLE
) -> list[Record]:
    """``records`` (answerable, each with a document) with ``share`` of them made unanswerable: the
    question paired with the document of another group (``meta["title"]``, else another document)
    that contains none of its answers (normalised, as whole words), the gold the unanswerable
    sentence. Deterministic in ``seed``; ids get ``:swapped``, ``meta["swapped_from"]`` names the
    row whose document was borrowed. A question is kept once, answerable or swapped."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"swap_share={share}: must be in [0, 1]")
    bad = next((r for r in records if not r.answerable or not r.document), None)
    if bad is not None:
        raise DataError(f"swapped unanswerables need answerable rows with a document; row {bad.id!r} is not")
    rng = random.Random(content_hash("swap", seed))
    order = list(range(len(records)))
    rng.shuffle(order)
    swap = set(order[: round(share * len(records))])
    group = [r.meta.get("title", r.document) for r in records]
    text = [f" {normalize_answer(r.document)} " for r in records]  # whole words: " p " is not in "up"
    out: list[Record] = []
    for i, record in enumerate(records):
        if i not in swap:
            out.append(record)
            continue
        answers = [
            f" {a} " for a in (normalize_answer(x) for x in record.meta.get("answers") or [record.gold]) if a
        ]
        start = rng.randrange(len(order))
        donor = next(
            (
                j
                for j in order[start:] + order[:start]
                if group[j] != group[i] and not any(a in text[j] for a in answers)
            ),
            None,
        )
        if donor is None:
            raise DataError(f"row {record.id!r}: no document of another group lacks its answers")
        out.append(
            replace(
                record,
                id=f"{record.id}:swapped",
                gold=unanswerable_sentence,
                document=records[donor].document,
                answerable=False,
                meta={**record.meta, "answers": [], "swapped_from": records[donor].id},
            )
        )
    return out


def _squad_record(qa: dict, para: dict, where: str, title: str, unanswerable: str) -> Record:
    context = require_str(para, "context", where.rsplit(".qas", 1)[0])
    question = require_str(qa, "question", where)
    qid = require_str(qa, "id", where)
    impossible = optional_bool(qa, "is_impossible", where, default=False)
    if not isinstance(qa.get("answers", []), list):
        raise DataError(f"{where}: field 'answers' must be a list")
    answers = [a.get("text", "") for a in qa.get("answers", []) if isinstance(a, dict)]
    answers = [check_unicode(a, "answers", where) for a in answers if isinstance(a, str) and a.strip()]
    if not impossible and not answers:
        raise DataError(f"{where}: answerable question without answers")
    gold = unanswerable if impossible else answers[0]
    return Record(
        id=qid,
        question=question,
        gold=gold,
        document=context,
        answerable=not impossible,
        meta={"source": "squad_v2", "title": title, "answers": answers},
    )


def quac(
    path: str,
    unanswerable_sentence: str = DEFAULT_UNANSWERABLE,
    on_error: str = "raise",
    marker: str = "CANNOTANSWER",
    source: str = "quac",
) -> list[Record]:
    """QuAC JSONL (llm-foundry layout: ``context`` ending in the current ``Question:``, ``answer``).

    The CANNOTANSWER marker is stripped from the context; the dialogue history stays in the
    document; ``answer == CANNOTANSWER`` marks an unanswerable question. The same layout serves
    NQ open-book (``nq_open_book``), whose contexts start with ``Context:`` and end in ``Answer:``.
    """
    file = Path(path)

    def make(raw: bytes, where: str) -> Record:
        row = _parse_json_line(raw, where)
        context = require_str(row, "context", where)
        answer = require_str(row, "answer", where)
        head, sep, question = context.rpartition("Question:")
        question = question.strip().removesuffix("Answer:").strip()
        if not sep or not question:
            raise DataError(f"{where}: field 'context' has no trailing 'Question:' turn")
        document = head.replace(marker, "").strip().removeprefix("Context:").strip()
        impossible = answer.strip() == marker
        gold = unanswerable_sentence if impossible else answer.strip()
        return Record(
            id=optional_id(row, "id", where) or content_hash(context),
            question=question,
            gold=gold,
            document=document,
            answerable=not impossible,
            meta={"source": source, "answers": [] if impossible else [answer.strip()]},
        )

    return _collect(((w, lambda r=r, w=w: make(r, w)) for w, r in _read_jsonl(file)), str(file), on_error)


def nq_open_book(path: str, on_error: str = "raise", **_: Any) -> list[Record]:
    """NQ open-book JSONL (answerable only): an out-of-domain over-refusal check."""
    return quac(path, on_error=on_error, source="natural_questions")


def jsonl(
    path: str,
    format: str = "auto",
    prompt_field: str = "prompt",
    response_field: str = "response",
    document_field: str | None = "document",
    id_field: str = "id",
    answerable_field: str | None = "answerable",
    unanswerable_sentence: str = DEFAULT_UNANSWERABLE,
    on_error: str = "raise",
) -> list[Record]:
    """Your own JSONL in any format of ``ssr.data.formats`` (prompt/completion, messages,
    prompt/response, alpaca, sharegpt), detected per row from its keys unless ``format`` names one."""
    file = Path(path)
    fields = RowFields(prompt_field, response_field, document_field, id_field, answerable_field)

    def make(raw: bytes, where: str) -> Record:
        row = _parse_json_line(raw, where)
        default_id = f"{file.name}:{where.rsplit(':', 1)[1]}"
        return row_to_record(row, where, default_id, str(file), format, fields, unanswerable_sentence)

    return _collect(((w, lambda r=r, w=w: make(r, w)) for w, r in _read_jsonl(file)), str(file), on_error)


def open_dataset(
    name: str,
    split: str = "train",
    config: str | None = None,
    data_files: Any = None,
    revision: str | None = None,
) -> Any:
    """A ``datasets`` split: a hub id, a builder (``json``/``parquet`` + ``data_files``), a local
    directory of data files, or a directory written by ``Dataset.save_to_disk``."""
    import datasets

    local = Path(name)
    if local.is_dir() and ((local / "state.json").is_file() or (local / "dataset_dict.json").is_file()):
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{name}: no split {split!r} (has {', '.join(ds)})")
            ds = ds[split]
        return ds
    return datasets.load_dataset(name, config, split=split, data_files=data_files, revision=revision)


def hub(
    name: str,
    split: str = "train",
    config: str | None = None,
    format: str = "auto",
    question_field: str = "question",
    response_field: str = "answer",
    document_field: str | None = "context",
    id_field: str = "id",
    answerable_field: str | None = None,
    data_files: Any = None,
    revision: str | None = None,
    unanswerable_sentence: str = DEFAULT_UNANSWERABLE,
    on_error: str = "raise",
) -> list[Record]:
    """A Hugging Face ``datasets`` dataset (see :func:`open_dataset`), rows read like :func:`jsonl`'s.

    ``question_field`` / ``response_field`` / ``document_field`` name the ``prompt_response``
    columns (SQuAD: question / answers / context; an empty ``answers.text`` is unanswerable).
    """
    ds = open_dataset(name, split, config, data_files, revision)
    fields = RowFields(question_field, response_field, document_field, id_field, answerable_field)
    source = f"{name}[{split}]"

    def make(i: int, row: dict[str, Any]) -> Record:
        where = f"{source} row {i}"
        return row_to_record(row, where, str(i), name, format, fields, unanswerable_sentence)

    return _collect(
        ((f"{source} row {i}", lambda i=i, r=r: make(i, r)) for i, r in enumerate(ds)), source, on_error
    )


def embedded_grounded_qa(
    split: str = "train", unanswerable_sentence: str = DEFAULT_UNANSWERABLE, **kwargs: Any
) -> list[Record]:
    """The package's own deterministic grounded-QA set (see ``ssr.data.embedded``)."""

    return generate(split=split, unanswerable_sentence=unanswerable_sentence, **kwargs)


def subsample(
    records: list[Record], max_rows: int | None = None, balance: bool = False, seed: int = 0
) -> list[Record]:
    """Optionally balance answerable/unanswerable 50/50, then cap the row count (deterministic)."""
    rng = random.Random(seed)
    rows = list(records)
    if balance:
        ans = [r for r in rows if r.answerable]
        una = [r for r in rows if not r.answerable]
        n = min(len(ans), len(una))
        if max_rows:
            n = min(n, max_rows // 2)
        rows = rng.sample(ans, n) + rng.sample(una, n)
        rng.shuffle(rows)
    elif max_rows and len(rows) > max_rows:
        rows = rng.sample(rows, max_rows)
    return rows


def sample_rows(records: list[Record], max_rows: int | None, balance: bool, seed: int) -> list[Record]:
    """A data split's rows: ``max_rows`` 0 means none (no validation set), else :func:`subsample`."""
    return [] if max_rows == 0 else subsample(records, max_rows=max_rows, balance=balance, seed=seed)
