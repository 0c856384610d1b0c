"""Response-only tokenization on SmolLM2's real chat template."""

from __future__ import annotations

import pytest

from ssr.data.prompts import PromptConfig, build_messages, render_prompt
from ssr.data.records import Record
from ssr.data.tokenize import (
    IGNORE_INDEX,
    PromptPrefixError,
    tokenize_all,
    tokenize_pair,
    tokenize_record,
)

CFG = PromptConfig()
REC = Record(
    id="r1",
    question="Who founded Acme?",
    gold="Acme was founded by Ana Ruiz.",
    document="Acme is a company. It was started by Ana Ruiz. " * 3,
)


def test_labels_are_exactly_the_assistant_span_including_end_of_turn(tokenizer):
    messages = build_messages(REC, CFG)
    ids, labels = tokenize_pair(tokenizer, messages, REC.gold)
    # The assistant span as the template renders it: everything after the generation header.
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": REC.gold}], tokenize=False
    )
    prompt = render_prompt(tokenizer, messages)
    assert full.startswith(prompt)
    span_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    kept = [t for t in labels if t != IGNORE_INDEX]
    assert kept == span_ids
    assert tokenizer.decode(kept).startswith(REC.gold)
    assert "<|im_end|>" in tokenizer.decode(kept), "end-of-turn token must be trained"
    first = labels.index(next(t for t in labels if t != IGNORE_INDEX))
    assert all(x == IGNORE_INDEX for x in labels[:first])
    assert "<|im_start|>assistant" in tokenizer.decode(ids[:first])


def test_prefix_check_catches_templates_that_rewrite_the_prompt(tokenizer):
    class Rewriting:
        def __init__(self, tok):
            self.tok = tok

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
            text = self.tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
            return text if add_generation_prompt else "SYSTEM CHANGED " + text

        def __call__(self, *a, **k):
            return self.tok(*a, **k)

    with pytest.raises(PromptPrefixError):
        tokenize_pair(Rewriting(tokenizer), build_messages(REC, CFG), REC.gold)


@pytest.mark.parametrize("max_length", [120, 160, 240])
def test_truncation_cuts_the_document_never_the_response(tokenizer, max_length):
    long = Record(
        id="long",
        question="Who founded Acme?",
        gold="Acme was founded by Ana Ruiz in 1999.",
        document="Filler sentence about nothing in particular. " * 200,
    )
    tok = tokenize_record(tokenizer, long, long.gold, CFG, max_length)
    assert tok is not None and tok.truncated_document
    assert len(tok.input_ids) <= max_length
    _full_ids, full_labels = tokenize_pair(tokenizer, build_messages(long, CFG), long.gold)
    response = [t for t in full_labels if t != IGNORE_INDEX]
    assert [t for t in tok.labels if t != IGNORE_INDEX] == response
    assert tok.input_ids[-len(response) :] == response


def test_rows_whose_response_cannot_fit_are_dropped_and_counted(tokenizer):
    short = Record(id="ok", question="q?", gold="yes", document="doc")
    huge = Record(id="huge", question="q?", gold="word " * 400, document="doc")
    rows, report = tokenize_all(tokenizer, [short, huge], [short.gold, huge.gold], CFG, max_length=120)
    assert [r.id for r in rows] == ["ok"] and report.dropped == ["huge"]
    with pytest.raises(ValueError, match="no training rows left"):
        tokenize_all(tokenizer, [huge], [huge.gold], CFG, max_length=120)


def test_messages_records_use_their_chat_prefix(tokenizer):
    rec = Record(id="m", question="hi", gold="hello!", messages=({"role": "user", "content": "hi"},))
    _ids, labels = tokenize_pair(tokenizer, build_messages(rec, CFG), rec.gold)
    assert tokenizer.decode([t for t in labels if t != IGNORE_INDEX]).startswith("hello!")


def test_generation_prompts_cut_long_documents_like_training(tokenizer):
    from ssr.data.prompts import prompt_length
    from ssr.selection.methods import MethodConfig
    from ssr.selection.pipeline import answer_prompts, rewrite_prompts

    long = Record(
        id="long", question="Where is box 7?", gold="In the attic.", document="Box 7 is lost. " * 400
    )
    short = Record(id="short", question="Where is box 1?", gold="Here.", document="Box 1 is here.")
    full = answer_prompts(tokenizer, [long, short], CFG)
    cut = answer_prompts(tokenizer, [long, short], CFG, max_tokens=200)
    assert cut[1] == full[1]  # fits: untouched
    n = len(tokenizer(cut[0], add_special_tokens=False)["input_ids"])
    assert n <= 200 < len(tokenizer(full[0], add_special_tokens=False)["input_ids"])
    assert "Where is box 7?" in cut[0] and " ..." in cut[0]  # the question is never cut
    method = MethodConfig(name="sdft")
    rewrite = rewrite_prompts(tokenizer, [long], CFG, method, max_tokens=260)[0]
    assert len(tokenizer(rewrite, add_special_tokens=False)["input_ids"]) <= 260
    assert "In the attic." in rewrite and "Where is box 7?" in rewrite
    assert prompt_length(tokenizer, [{"role": "user", "content": "hi"}]) > 1
