"""Hard-class-pair analysis (``spat analyze``, ``spat compare``).

SPAT (Hou, Han & Li, AAAI-23, arXiv 2210.15068) observes that untargeted adversarial examples
land on the class most similar to the true one, so hard class pairs (cat↔dog, shirt↔T-shirt)
become each other's targets. This package measures that for a trained run:

* :mod:`spat.analysis.stats` — pure functions of confusion matrices (normalisations, ranked
  directed and symmetric flows, target concentration, Spearman of similarity vs flow);
* :mod:`spat.analysis.similarity` — class similarity from the classifier weights and the
  class-mean penultimate features;
* :mod:`spat.analysis.over_epochs` — the same statistics per epoch from ``metrics.jsonl``;
* :mod:`spat.analysis.analyze` / :mod:`spat.analysis.compare` — one run's analysis and the
  comparison of runs: :mod:`spat.analysis.record` (the :class:`RunAnalysis` record and its
  summary), :mod:`spat.analysis.predictions` (``spat eval``'s predictions or computed ones,
  cached), :mod:`spat.analysis.writers` (CSV/JSON), :mod:`spat.analysis.markdown`
  (``report.md``) and :mod:`spat.analysis.plots` (PNG + PDF);
* :mod:`spat.analysis.command` — the argparse front-ends.
"""
