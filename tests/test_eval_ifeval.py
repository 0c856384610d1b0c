"""IFEval in every evaluation: the packaged ``ssr_ifeval`` task scores as lm-eval's reference checkers
do (offline: the Punkt tables from an installed package), refusal leak vs the base's replies, the
end-of-turn measures of self-drift, over-refusal, and the per-item files in ssr-report's statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ssr.eval import ifeval_checks
from ssr.eval.ifeval import IFEval, IFEvalConfig, Replies, aggregate, ifeval_task, reply_rows, summary
from ssr.eval.items import ItemSink
from ssr.eval.task_metrics import grounded_qa_scores
from ssr.eval.token_nll import row_scores
from ssr.report.paired import change_rows, coverage, difference_rows, measures
from ssr.report.pareto import on_front, pareto_points
from ssr.report.runs import find_runs
from ssr.report.tables import table

SENTENCE = "The answer is not in the document."

# hand-written prompts (the google-research schema) and replies, with what the checkers must say
DOCS = [
    {"key": 1, "prompt": "Describe the sky without commas.", "instruction_id_list": ["punctuation:no_comma"],
     "kwargs": [{}]},
    {"key": 2, "prompt": "Say where Mr. Smith went, in fewer than 3 sentences.",
     "instruction_id_list": ["length_constraints:number_sentences"],
     "kwargs": [{"relation": "less than", "num_sentences": 3}]},
    {"key": 3, "prompt": "Give it a title in double angular brackets and end with 'Any other questions?'.",
     "instruction_id_list": ["detectable_format:title", "startend:end_checker"],
     "kwargs": [{}, {"end_phrase": "Any other questions?"}]},
    {"key": 4, "prompt": "Describe the sky without the word blue.",
     "instruction_id_list": ["keywords:forbidden_words"], "kwargs": [{"forbidden_words": ["blue"]}]},
]  # fmt: skip
REPLIES = {
    "1": "Sure, here it is:\nThe sky is wide and the grass is green.",  # strict fails, loose passes
    "2": "Mr. Smith met Dr. Jones in Washington D.C. today. They talked.",  # 2 sentences (Punkt)
    "3": "<<My Title>>\nSome text here. Any other questions?",
    "4": "**Note**: not blue\nThe sky is grey today.",  # strict fails, loose passes
}
STRICT = {"1": [False], "2": [True], "3": [True, True], "4": [False]}
LOOSE = {"1": [True], "2": [True], "3": [True, True], "4": [True]}


@pytest.fixture
def ifeval_root(tmp_path: Path) -> Path:
    (tmp_path / "ifeval").mkdir()
    (tmp_path / "ifeval" / "input_data.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return tmp_path


@pytest.fixture
def calls(tmp_path, monkeypatch) -> list[int]:
    """One entry per generation of IFEval replies (private caches)."""
    import ssr.eval.ifeval as ifeval_module

    monkeypatch.setenv("SSR_CACHE", str(tmp_path / "cache"))
    calls: list[int] = []
    real = ifeval_module.generate_replies
    monkeypatch.setattr(ifeval_module, "generate_replies", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_ssr_ifeval_scores_hand_written_replies_as_the_reference_checkers(ifeval_root):
    task = ifeval_task(str(ifeval_root))
    docs = list(task.eval_docs)
    assert [d["key"] for d in docs] == [1, 2, 3, 4]
    utils = ifeval_checks.checkers()  # lm-eval's own checkers, called directly as the reference
    for doc, raw in zip(docs, DOCS):
        key, reply = str(doc["key"]), REPLIES[str(doc["key"])]
        got = task.process_results(doc, [reply])
        example = utils.InputExample(raw["key"], raw["instruction_id_list"], raw["prompt"], raw["kwargs"])
        strict = utils.test_instruction_following_strict(example, reply)
        loose = utils.test_instruction_following_loose(example, reply)
        assert got["inst_level_strict_acc"] == strict.follow_instruction_list == STRICT[key]
        assert got["inst_level_loose_acc"] == loose.follow_instruction_list == LOOSE[key]
        assert got["prompt_level_strict_acc"] == all(STRICT[key])
        assert got["prompt_level_loose_acc"] == all(LOOSE[key])
    rows = [{"id": str(d["key"]), **task.process_results(d, [REPLIES[str(d["key"])]])} for d in docs]
    assert aggregate(task, rows) == pytest.approx(
        {
            "prompt_level_strict_acc": 2 / 4,
            "inst_level_strict_acc": 3 / 5,
            "prompt_level_loose_acc": 1.0,
            "inst_level_loose_acc": 1.0,
        }
    )


def test_punkt_tables_come_from_the_installed_package_and_nothing_is_downloaded(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    root = ifeval_checks.punkt_data_root(tmp_path / "nltk_data")
    found = Path(str(nltk.data.find("tokenizers/punkt_tab/english/")))
    assert found.is_relative_to(root) and sorted(p.name for p in found.iterdir()) == sorted(
        ifeval_checks.PUNKT_FILES
    )
    with ifeval_checks.no_downloads(), pytest.raises(RuntimeError, match="download"):
        nltk.download("punkt_tab")
    # Punkt knows the abbreviations: a regex splitter would cut after Mr./Dr./D.C.
    util = ifeval_checks.checkers().instructions_registry.instructions.instructions_util
    assert util.count_sentences(REPLIES["2"]) == 2


def test_the_real_prompt_file_is_the_published_set(data_root):
    task = ifeval_task(str(data_root))
    docs = list(task.eval_docs)
    assert len(docs) == 541 and sum(len(d["instruction_id_list"]) for d in docs) == 834


def test_refusal_leak_counts_refusals_the_base_did_not_make(ifeval_root):
    task = ifeval_task(str(ifeval_root))
    docs = list(task.eval_docs)
    base = Replies(
        texts={"1": "Sure.", "2": "I cannot answer that.", "3": "A title.", "4": "Grey sky."},
        ended={"1": True, "2": True, "3": True, "4": False},
        n_tokens={"1": 10, "2": 10, "3": 10, "4": 10},
    )
    model = Replies(
        texts={"1": SENTENCE, "2": "I cannot answer that.", "3": "I cannot answer this question.", "4": "ok"},
        ended={"1": True, "2": True, "3": True, "4": True},
        n_tokens={"1": 8, "2": 6, "3": 4, "4": 2},
    )
    rows = reply_rows(task, docs, model, base, SENTENCE)
    assert [r["refused"] for r in rows] == [1.0, 1.0, 1.0, 0.0]
    assert [r["leak"] for r in rows] == [1.0, 0.0, 1.0, 0.0]  # item 2: the base refused too
    assert [r["task_sentence"] for r in rows] == [1.0, 0.0, 0.0, 0.0]
    scores = summary(task, rows, base)
    assert scores["refusal_leak"] == 0.5 and scores["refusal"] == 0.75 and scores["task_sentence"] == 0.25
    assert scores["length_ratio"] == pytest.approx(5 / 10) and scores["ended"] == 1.0
    assert summary(task, reply_rows(task, docs, base, base, SENTENCE), base)["refusal_leak"] == 0.0


def test_ifeval_in_an_evaluation_generates_once_for_the_base(
    ifeval_root, tokenizer, tiny_model, tmp_path, calls
):
    cfg = IFEvalConfig(limit=3, max_gen_toks=4)
    ev = IFEval(cfg, str(ifeval_root), SENTENCE)
    sink = ItemSink(tmp_path / "items", "base")
    base = ev.scores(tiny_model, tokenizer, None, sink, base=True)
    assert len(calls) == 1 and base["refusal_leak"] == 0.0 and base["length_ratio"] == 1.0 and base["n"] == 3
    rows = [json.loads(line) for line in (sink.dir / "ifeval.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {"response", "prompt_level_loose_acc", "inst_level_strict_acc", "leak"} <= set(
        rows[0]
    )
    again = IFEval(cfg, str(ifeval_root), SENTENCE)  # another run: the base's replies from the cache
    assert again.scores(tiny_model, tokenizer, None, base=True) == base and len(calls) == 1
    again.scores(tiny_model, tokenizer, None)  # a trained model's evaluation generates
    assert len(calls) == 2


def test_end_of_turn_measures_along_a_reply(tokenizer, tiny_model):
    prompt, reply, stop = [5, 6, 7], [8, 9, 10], 2
    row = ([*prompt, *reply, stop], [-100] * 3 + [*reply, stop])
    (got,) = row_scores(tiny_model, [row], pad_id=0, stop_ids=[stop, 3])
    with torch.no_grad():
        probs = tiny_model(torch.tensor([row[0]])).logits[0].float().softmax(-1)
    p = (probs[:, stop] + probs[:, 3]).tolist()  # position t predicts token t + 1
    inside = p[2:5]  # predicting the reply's 3 tokens
    assert got.n_tokens == 4 and got.stop_prob == pytest.approx(sum(inside) / 3, rel=1e-4)
    assert got.log_survival == pytest.approx(sum(math.log1p(-q) for q in inside), rel=1e-4)
    assert got.end_prob == pytest.approx(p[5], rel=1e-4)


def test_over_refusal_is_the_share_of_answerable_rows_declined():
    rows = [("I cannot answer that.", "Paris", True), ("Paris", "Paris", True), (SENTENCE, "", False)]
    rows += [("No information about it.", "Rome", True)]
    assert grounded_qa_scores(rows, SENTENCE).over_refusal == pytest.approx(2 / 3)


def _run(root: Path, method: str, base: list[float], final: list[float], leak: float) -> Path:
    d = root / method
    (d / "eval_items").mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"method": method, "seed": 1, "lr": 1e-3}))
    drift = {
        "base": {"scores": {"ifeval": {"prompt_level_strict_acc": sum(base) / len(base), "refusal_leak": 0.0}}},
        "epochs": [{"epoch": 0, "scores": {"ifeval": {"prompt_level_strict_acc": sum(final) / len(final),
                                                      "refusal_leak": leak}}}],
    }  # fmt: skip
    (d / "drift.json").write_text(json.dumps(drift))
    for tag, values in (("base", base), ("epoch_0", final)):
        ItemSink(d / "eval_items", tag).write(
            "ifeval", [{"id": str(k), "prompt_level_strict_acc": v} for k, v in enumerate(values)]
        )
    return d


def test_ifeval_items_feed_the_paired_statistics(tmp_path):
    base = [0.0, 0.0, 0.0, 1.0, 1.0]
    _run(tmp_path, "sft", base, [1.0, 0.0, 0.0, 0.0, 0.0], leak=0.4)
    _run(tmp_path, "ssr", base, [1.0, 1.0, 1.0, 1.0, 0.0], leak=0.0)
    runs = find_runs([tmp_path])
    groups = {r.method: [r] for r in runs}
    (measure,) = [m for m in measures(runs, []) if m.name == "ifeval/prompt_level_strict_acc"]
    change = {r.group: r.estimate for r in change_rows(groups, coverage(runs, [])) if r.measure == measure}
    assert change["sft"].mean == pytest.approx((1 - 2) / 5) and change["sft"].n_items == 5
    assert change["ssr"].mean == pytest.approx((4 - 2) / 5)
    (diff,) = [r for r in difference_rows(groups, "sft", coverage(runs, [])) if r.measure == measure]
    assert diff.estimate.mean == pytest.approx((4 - 1) / 5)  # ssr - sft on the same 5 prompts
    header = table(runs).splitlines()[0]  # ssr-report's columns and Pareto axes
    assert "ifeval/prompt_level_strict_acc" in header and "ifeval/refusal_leak" in header
    points = {p["method"]: p for p in pareto_points(runs, [], [])}
    assert (
        points["sft"]["ifeval"] == pytest.approx(100 * (1 - 2) / 5) and points["sft"]["refusal_leak"] == 40.0
    )


def test_pareto_front_of_the_generative_axes():
    points = [
        {"task_gain": 10.0, "ifeval": -8.0, "refusal_leak": 5.0},
        {"task_gain": 9.0, "ifeval": 1.0, "refusal_leak": 0.0},
        {"task_gain": 5.0, "ifeval": -1.0, "refusal_leak": 1.0},
    ]
    front = {
        k: [i for i, p in enumerate(points) if on_front(p, points, k)] for k in ("ifeval", "refusal_leak")
    }
    assert front == {"ifeval": [0, 1], "refusal_leak": [0, 1]}  # higher IFEval, lower leak is better


def test_an_evaluation_scores_ifeval_and_the_base_reuses_its_replies(
    ifeval_root, tokenizer, tiny_model, tmp_path, calls
):
    from ssr.data.prompts import PromptConfig
    from ssr.eval.evaluator import Evaluator
    from ssr.eval.self_drift import SelfDriftConfig
    from ssr.eval.suite import SuiteConfig
    from ssr.eval.task_sets import TaskMetricsConfig

    ev = Evaluator(
        SuiteConfig(), SelfDriftConfig(enabled=False), TaskMetricsConfig(), PromptConfig(), task_sets={},
        max_prompt_tokens=64, data_root=str(ifeval_root), ifeval=IFEvalConfig(limit=2, max_gen_toks=4),
    )  # fmt: skip
    base = ev.evaluate_base(tiny_model, tokenizer, precision=None, items=ItemSink(tmp_path, "base"))
    assert len(calls) == 1 and base["scores"]["ifeval"]["n"] == 2 and "ifeval" in base["seconds"]
    epoch = ev.evaluate(
        tiny_model, tokenizer, "epoch", precision=None, epoch=0, items=ItemSink(tmp_path, "e")
    )
    assert len(calls) == 2 and epoch["scores"]["ifeval"]["refusal_leak"] == 0.0
    assert epoch["scores"]["ifeval"]["length_ratio"] == 1.0  # the same weights reply the same
    assert (tmp_path / "e" / "ifeval.jsonl").is_file()
