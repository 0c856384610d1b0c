"""Generalisation-drift evaluation.

- ``task_metrics``: grounded-QA metrics (unanswerable detection, answer token recall/F1).
- ``tasks/`` + ``local_docs``: offline lm-eval tasks (``ssr_*``) mirroring lm-eval's hub tasks.
- ``suite``: ``run_suite`` (lm-eval ``simple_evaluate`` on an in-memory model).
- ``self_drift``: NLL of a model on the base model's own answers to general instructions.
- ``evaluate``: ``evaluate_model`` = suite + self-drift (used by ``ssr-eval``).
- ``drift_callback``: ``GeneralizationDriftCallback`` for Lightning.
- ``hub_mirror``: lm-eval's hub task YAMLs on the offline docs (faithfulness checks).
"""
