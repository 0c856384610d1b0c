"""Judges: decide per sample whether the model's own answer is as good as the gold one.

``rule_qa`` (task rule), ``hf`` (local causal LM) and ``openai`` (OpenAI-compatible server) share
the :class:`Judge` interface and the cached, resumable driver :func:`run_judge`. The HF and
OpenAI judges are imported lazily (``ssr.judges.hf`` pulls in torch/transformers).
"""

from ssr.judges.base import Judge, JudgeError, JudgeItem, Verdict, judge_key, run_judge
from ssr.judges.rule_qa import RuleQAJudge

__all__ = ["Judge", "JudgeError", "JudgeItem", "RuleQAJudge", "Verdict", "judge_key", "run_judge"]
