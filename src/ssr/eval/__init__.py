"""Generalisation-drift evaluation.

- ``task_metrics``: grounded-QA metrics (unanswerable detection, answer token recall/F1).
- ``tasks/`` + ``local_docs``: offline lm-eval tasks (``ssr_*``) mirroring lm-eval's hub tasks.
- ``suite``: ``run_suite`` (lm-eval ``simple_evaluate`` on an in-memory model).
- ``self_drift``: NLL of a model on the base model's own answers to general instructions.
- ``task_sets``: the held-out grounded-QA sets (in-domain val + ``data.ood``).
- ``evaluator``: ``Evaluator`` = suite + self-drift + task metrics, the base-evaluation cache and
  the ``eval.json`` schema (used by the drift callback and ``ssr-eval``).
- ``drift_callback``: ``GeneralizationDriftCallback`` for Lightning (when to evaluate, reporting).
"""
