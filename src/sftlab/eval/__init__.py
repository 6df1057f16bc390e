"""Evaluation: task metrics, label scoring, generation, perplexity / KL to base, paired statistics, scorecard.

Modules, from pure to model-facing:

- ``metrics``: accuracy, macro-F1, ECE, SQuAD EM / F1, ROUGE-L (pure Python / numpy).
- ``compare``: paired comparison of two per-item result vectors (bootstrap CI, exact tests, verdict).
- ``items``: reading eval files, rendering prompts, gold answers.
- ``forward``: padding, batched continuation log-likelihoods, continuation tokenisation.
- ``classification`` / ``generation`` / ``reply`` / ``perplexity``: per-kind scorers.
- ``tasks``: ``load_task_items``.
- ``kinds``: the task kinds as objects in one registry (``KINDS``): load, score (model and base, the base
  from ``base_cache`` when scored before), compare, headline, per-item values; ``Scored`` is their result.
- ``scorecard``: ``evaluate_model`` (model vs base), ``write_scorecard``, ``format_scorecard``.
- ``balance`` / ``tradeoff``: points on the specialty / versatility plane; ``interpolate``: WiSE-FT.
- ``cli``: ``sftlab eval``.
"""
