"""The README tables of a measure.py folder, printed as Markdown from its records alone.

python tables.py DIR        # DIR: a measure.py --out folder (base.json, sft.json, ssr.json, results.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCORES = [  # (column, key in the ifeval scores, scale, digits)
    ("prompt strict", "prompt_level_strict_acc", 100, 1),
    ("prompt loose", "prompt_level_loose_acc", 100, 1),
    ("inst strict", "inst_level_strict_acc", 100, 1),
    ("inst loose", "inst_level_loose_acc", 100, 1),
    ("mean tokens", "mean_tokens", 1, 0),
    ("mean chars", "mean_chars", 1, 0),
    ("ended (EOT)", "ended", 100, 1),
    ("refused", "refusal", 100, 1),
    ("refusal leak", "refusal_leak", 100, 1),
    ("task sentence", "task_sentence", 100, 1),
]
PAIRED = [  # (row, results.json paired key, digits)
    ("IFEval prompt strict (points)", "ifeval/prompt_level_strict_acc", 1),
    ("IFEval prompt loose (points)", "ifeval/prompt_level_loose_acc", 1),
    ("replies refusing, IFEval (points)", "ifeval/refused", 1),
    ("reply length (tokens)", "ifeval/n_tokens", 0),
    ("replies ended by EOT (points)", "ifeval/ended", 1),
    ("self-drift NLL (nats/token)", "self_drift/nll", 2),
    ("self-drift P(EOT) inside the base's answers (points)", "self_drift/stop_prob", 1),
    ("self-drift survival (points)", "self_drift/survival", 0),
    ("over-refusal, NQ open-book (points)", "tasks.ood_nq/over_refusal", 0),
    ("over-refusal, QuAC (points)", "tasks.ood_quac/over_refusal", 0),
]


def _cell(est: dict | None, digits: int) -> str:
    if not est:
        return "–"
    text = f"{est['mean']:+.{digits}f} [{est['lo']:+.{digits}f}, {est['hi']:+.{digits}f}]"
    p = est.get("p_value")
    if p is not None:
        text += f" p {p:.2g}"
    return f"**{text}**" if est.get("significant") else text


def tables(folder: Path) -> str:
    results = json.loads((folder / "results.json").read_text())
    names = list(results["scores"])
    lines = ["| model | " + " | ".join(c for c, *_ in SCORES) + " |", "|---" * (len(SCORES) + 1) + "|"]
    for name in names:
        ifeval = results["scores"][name].get("ifeval", {})
        cells = [f"{scale * ifeval[key]:.{d}f}" if key in ifeval else "–" for _, key, scale, d in SCORES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    n = int(results["scores"][names[0]].get("ifeval", {}).get("n", 0))
    lines += ["", f"Paired over the shared items ({n} IFEval prompts; 95% bootstrap CI, p):", ""]
    pairs = [
        p
        for p in ("sft - base", "ssr - base", "ssr - sft")
        if any(p in r for r in results["paired"].values())
    ]
    lines += [
        "| measure | " + " | ".join(p.replace("-", "−") for p in pairs) + " |",
        "|---" * (len(pairs) + 1) + "|",
    ]
    for label, key, digits in PAIRED:
        row = results["paired"].get(key)
        if row:
            lines.append(f"| {label} | " + " | ".join(_cell(row.get(p), digits) for p in pairs) + " |")
    lines += ["", "| model | IFEval s | self-drift s | task metrics s | wall s |", "|---|---|---|---|---|"]
    for name, sec in results["seconds"].items():
        lines.append(
            f"| {name} | {sec.get('ifeval', 0):.0f} | {sec.get('drift', 0):.1f} | {sec.get('tasks', 0):.1f} | {sec.get('wall', 0):.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(tables(Path(sys.argv[1])))
