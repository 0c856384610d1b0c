"""Sentence counts of real replies: NLTK's Punkt on the installed package's tables (what the IFEval
checkers use here) against the package's own independent Punkt implementation (same tables) and
against the regex splitter that replaced Punkt in the issue's first measurement; and how many
``length_constraints:number_sentences`` verdicts that regex substitute would have flipped.

    python punkt_check.py <measure dir>...   # every items/*/ifeval.jsonl under them
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ssr.eval.ifeval import ifeval_task
from ssr.eval.ifeval_checks import checkers
from ssr.eval.items import read_source


def main(dirs: list[Path]) -> dict[str, float]:
    import punkt

    util = checkers().instructions_registry.instructions.instructions_util
    docs = {str(d["key"]): d for d in ifeval_task(None).eval_docs}
    replies, flips, checked = [], 0, 0
    for path in sorted(p for d in dirs for p in d.glob("items/*/ifeval.jsonl")):
        for item_id, row in read_source(path).items():
            text = row["response"]
            replies.append(text)
            doc = docs[item_id]
            for instruction, kwargs in zip(doc["instruction_id_list"], doc["kwargs"]):
                if instruction != "length_constraints:number_sentences" or not text.strip():
                    continue
                n = kwargs["num_sentences"]
                below = kwargs["relation"] == "less than"
                punkt_ok = util.count_sentences(text) < n if below else util.count_sentences(text) >= n
                regex = len(util.split_into_sentences(text))
                flips += punkt_ok != (regex < n if below else regex >= n)
                checked += 1
    nltk_counts = [util.count_sentences(t) for t in replies]
    package_counts = [len(punkt.sent_tokenize(t, language="english")) for t in replies]
    regex_counts = [len(util.split_into_sentences(t)) for t in replies]
    n = len(replies)
    result = {
        "replies": n,
        "nltk_vs_package_agree": sum(a == b for a, b in zip(nltk_counts, package_counts)) / n,
        "nltk_vs_regex_agree": sum(a == b for a, b in zip(nltk_counts, regex_counts)) / n,
        "number_sentences_checks": checked,
        "number_sentences_flipped_by_regex": flips,
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]])
