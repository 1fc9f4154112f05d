"""Fix each class's most similar class before a comparison, from a model the comparison does not
contain (issue 22, item 6: claim 2 of arXiv 2210.15068 as the paper states it).

The rule: train a *standard* (non-adversarial) small_cnn on the dataset with a seed that no
comparison or tuning run uses (900), at the training settings given on the command line, and
take for each class a the class b ≠ a whose classifier weight row is closest in cosine,
argmax_b cos(w_a, w_b) (the paper's notion of class similarity, Sec. 3). The compared models and
their test results play no part. The map is written as JSON with the rule, the training settings,
the reference model's clean test accuracy and the whole similarity matrix; a study names it in
``study.most_similar = { <dataset> = "<file>" }``, and every cell then reports the
"most-similar share": of class a's test images that the primary attack misclassifies, the share
predicted as a's most similar class, averaged over the classes with at least 5 such errors.

Run (from the repository root; one core, seconds to minutes):

    python3 docs/study/most_similar.py digits docs/study/similar/digits.json
    python3 docs/study/most_similar.py fashion_mnist docs/study/similar/fashion_mnist.json \
        --set data_dir=../shared/data --set train_subset=5000 --set epochs=10 --set val_size=0.02
    python3 docs/study/most_similar.py mnist docs/study/similar/mnist.json \
        --set data_dir=../shared/data --set train_subset=15000 --set epochs=10 --set val_size=0.02
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import spat
from spat.analysis.similarity import head_similarity
from spat.build import load_run

REFERENCE_SEED = 900


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("dataset")
    p.add_argument("out", type=Path)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a spat train setting of the reference run (repeatable)")
    args = p.parse_args()
    settings: dict[str, object] = {"dataset": args.dataset, "method": "standard",
                                   "seed": REFERENCE_SEED, "deterministic": True,
                                   "device": "cpu"}
    for kv in args.set:
        k, _, v = kv.partition("=")
        settings[k] = _value(v)
    with tempfile.TemporaryDirectory() as tmp:
        settings.update(out_dir=tmp, name="reference")
        summary = spat.train(settings)
        run = load_run(Path(tmp) / "reference", which="last")
        sim = head_similarity(run.model)
        names = list(run.info.class_names)
        masked = sim.copy()
        np.fill_diagonal(masked, -np.inf)
        most = {names[a]: names[int(np.argmax(masked[a]))] for a in range(len(names))}
        config = {k: v for k, v in run.config.to_dict().items() if k not in ("out_dir", "name")}
    doc = {"schema": "spat.most_similar/1", "dataset": args.dataset,
           "rule": "argmax over b != a of cos(w_a, w_b), the classifier weight rows of a "
                   f"standard model trained with seed {REFERENCE_SEED} (no compared model, no "
                   "test result of one)",
           "classes": names, "most_similar": most,
           "reference": {"config": config,
                         "test_clean_acc": summary.get("test_clean_acc")
                         if isinstance(summary, dict) else None},
           "similarity": [[round(float(x), 4) for x in row] for row in sim]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: " + ", ".join(f"{a}→{b}" for a, b in most.items()))


if __name__ == "__main__":
    main()
