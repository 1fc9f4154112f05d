"""spat: self-paced hard-class-pair reweighting adversarial training (Hou, Han & Li, AAAI-23,
arXiv 2210.15068), the standard baselines (PGD-AT, TRADES, MART), the field's evaluation protocol
and hard-class-pair analysis."""

__version__ = "0.1.0"
