"""Target selection: which text each training example learns.

sft        gold everywhere
dft        gold everywhere, trained with the DFT loss (``loss=dft`` by default; see ssr.models.losses)
ssr        the model's own answer where the judge accepts it, gold elsewhere
self_only  the model's own answer where the judge accepts it; the other rows are dropped
           (Retaining-by-Doing's Self-SFT, 2510.18874)
sdft       the model's rewrite of the gold answer where the judge accepts it, gold elsewhere:
           Self-Distillation Fine-Tuning of Yang et al. 2024 (2402.13669), an offline rewrite
           of the data. Not the on-policy self-distillation of Shenfeld et al. 2026 (TRL's
           experimental ``SDFTTrainer``: the student samples, the gold-conditioned model is the
           teacher). ``sdft_rewrite`` is the unambiguous name of the same method.
s3ft       own answer if accepted, else the model's paraphrase of gold if accepted, else gold
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ssr.data.records import Record
from ssr.models.losses import LOSSES

SOURCES = ("self", "paraphrase", "rewrite", "gold", "dropped")
METHODS = ("sft", "dft", "ssr", "self_only", "sdft", "sdft_rewrite", "s3ft")
ALIASES = {"sdft_rewrite": "sdft"}  # the same method under an unambiguous name
DROPPED = "dropped"  # self_only: rows whose own answer the judge rejected (not trained on)
DEFAULT_REWRITE_TEMPLATE = (
    "{prompt}\n\nHere is a reference answer:\n<reference>\n{gold}\n</reference>\n"
    "Write your own answer to the question above. It must say the same thing as the reference "
    "answer, in your own words. Reply with the answer only."
)


@dataclass(frozen=True)
class MethodConfig:
    """``use_self_for_unanswerable``: in ssr/s3ft, also learn accepted own refusals on
    unanswerable questions (default True: the judge already checked that the model declined,
    and learning its own phrasing of the refusal keeps it closest to its own distribution)."""

    name: str = "sft"
    use_self_for_unanswerable: bool = True
    rewrite_template: str = DEFAULT_REWRITE_TEMPLATE
    loss: str = "ce"  # the method's default training loss (ce | dft); a top-level `loss=` overrides it

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r}; valid choices: {', '.join(METHODS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown method.loss {self.loss!r}; valid choices: {', '.join(LOSSES)}")
        object.__setattr__(self, "name", ALIASES.get(self.name, self.name))

    @property
    def needs_self(self) -> bool:
        return self.name in ("ssr", "self_only", "s3ft")

    @property
    def needs_rewrite(self) -> bool:
        return self.name in ("sdft", "s3ft")

    @property
    def needs_judge(self) -> bool:
        return self.name not in ("sft", "dft")


@dataclass(frozen=True)
class Candidate:
    """A model-written target and its verdict."""

    text: str
    accept: bool
    score: float
    rationale: str = ""


@dataclass(frozen=True)
class Selection:
    """One row of selection.jsonl."""

    id: str
    source: str
    target: str
    answerable: bool
    verdict: bool | None = None
    score: float | None = None
    self_response: str | None = None
    rewrite: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_one(
    cfg: MethodConfig, record: Record, own: Candidate | None, rewrite: Candidate | None
) -> Selection:
    """Apply the method's rule to one example."""
    base = dict(
        id=record.id,
        answerable=record.answerable,
        self_response=own.text if own else None,
        rewrite=rewrite.text if rewrite else None,
    )
    own_ok = own is not None and own.accept and (record.answerable or cfg.use_self_for_unanswerable)
    if cfg.needs_self and own is None:
        raise ValueError(f"method {cfg.name} needs the model's own answer for row {record.id!r}")
    if cfg.name in ("sdft", "s3ft") and rewrite is None:
        raise ValueError(f"method {cfg.name} needs the model's rewrite of gold for row {record.id!r}")
    if cfg.needs_self and own_ok:
        return Selection(source="self", target=own.text, verdict=True, score=own.score, **base)
    if cfg.name == "self_only":
        return Selection(source=DROPPED, target="", verdict=own.accept, score=own.score, **base)
    if cfg.name == "s3ft" and rewrite.accept:
        return Selection(source="paraphrase", target=rewrite.text, verdict=True, score=rewrite.score, **base)
    if cfg.name == "sdft" and rewrite.accept:
        return Selection(source="rewrite", target=rewrite.text, verdict=True, score=rewrite.score, **base)
    judged = own if cfg.name == "ssr" else (rewrite if cfg.name in ("sdft", "s3ft") else None)
    return Selection(
        source="gold",
        target=record.gold,
        verdict=None if judged is None else judged.accept,
        score=None if judged is None else judged.score,
        **base,
    )


def select_targets(
    cfg: MethodConfig,
    records: list[Record],
    own: list[Candidate] | None = None,
    rewrites: list[Candidate] | None = None,
) -> list[Selection]:
    """Targets for every record, in order."""
    for name, cands in (("own answers", own), ("rewrites", rewrites)):
        if cands is not None and len(cands) != len(records):
            raise ValueError(f"{name}: {len(cands)} for {len(records)} records")
    selections = [
        select_one(cfg, r, own[i] if own else None, rewrites[i] if rewrites else None)
        for i, r in enumerate(records)
    ]
    if selections and all(s.source == DROPPED for s in selections):
        raise ValueError(
            f"method={cfg.name}: the judge accepted none of the {len(selections)} own answers, so "
            "there is nothing to train on (use method=ssr, a more lenient judge, or more rows)"
        )
    return selections


def trained(selections: list[Selection]) -> list[Selection]:
    """The selections that are trained on (``self_only`` drops rejected rows)."""
    return [s for s in selections if s.source != DROPPED]


@dataclass
class SelectionStats:
    method: str
    rows: int
    by_source: dict[str, float]
    by_source_answerable: dict[str, float]
    by_source_unanswerable: dict[str, float]
    counts: dict[str, int]
    judge_accept_rate_self: float | None = None
    judge_accept_rate_rewrite: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shares(rows: list[Selection]) -> dict[str, float]:
    counts = Counter(s.source for s in rows)
    return {src: (counts[src] / len(rows) if rows else 0.0) for src in SOURCES}


def selection_stats(
    cfg: MethodConfig,
    selections: list[Selection],
    own: list[Candidate] | None = None,
    rewrites: list[Candidate] | None = None,
) -> SelectionStats:
    """Share of targets by source, overall and by answerability, plus the judge's accept rates."""
    return SelectionStats(
        method=cfg.name,
        rows=len(selections),
        by_source=_shares(selections),
        by_source_answerable=_shares([s for s in selections if s.answerable]),
        by_source_unanswerable=_shares([s for s in selections if not s.answerable]),
        counts=dict(Counter(s.source for s in selections)),
        judge_accept_rate_self=(sum(c.accept for c in own) / len(own)) if own else None,
        judge_accept_rate_rewrite=(sum(c.accept for c in rewrites) / len(rewrites)) if rewrites else None,
    )
