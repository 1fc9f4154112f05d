"""The study file (TOML) and the cells it declares.

::

    [study]
    name = "digits_small"          # folder under out_dir
    out_dir = "runs/studies"       # relative paths: relative to the current directory
    datasets = ["digits"]
    seeds = [0, 1, 2]
    baseline = "pgd_at"            # the variant the paired differences are taken against
    pairs = [["spat_s16", "spat_t1"]]   # optional: more paired differences, first − second
    # optional, per dataset: the share of class a's attacked errors that land in class b
    # (the measure of the paper's Fig. 1: misclassified dogs predicted as "cat")
    class_pairs = { digits = [["8", "1"]] }
    plugins = ["my_methods.py"]    # optional: modules or .py files (relative to this file)
                                   # defining methods/attacks (spat.utils.plugins)
    reuse = ["digits_main"]        # optional: other studies under out_dir whose finished
                                   # cells with this cell's exact settings are copied, not
                                   # run again (spat.study.cell.reusable_source)

    [train]                        # spat train settings shared by every cell
    epochs = 5
    train_subset = 500

    [variants.pgd_at]              # a name plus any spat train settings
    method = "pgd_at"
    [variants.spat_s16]
    method = "spat"
    cosine_scale = 16
    [variants.spat_t1]             # a variant may override evaluation settings too
    method = "spat"
    eval = { attack_logits = "unit_cosine" }   # or a [variants.spat_t1.eval] table

    [eval]                         # the evaluation of every cell
    attacks = ["fgsm", "pgd20"]
    n_examples = 200
    which = "best"

    [engine]                       # optional: how cells run
    kind = "local"                 # or "submitit"

    [[claims]]                     # optional, repeated: what the study is run to test
    name = "spat_beats_pgd_at"     # (spat.study.claims has the keys and the verdict rule)
    variant = "spat_s16"
    baseline = "pgd_at"
    metric = "PGD-20"
    direction = "higher"
    family = "primary"
    margin = 2.0

Everything is validated before the first cell runs: an unknown key, a wrong type or a bad
setting is one line naming the file and the field (exit 2). Every cell's training config goes
through :func:`spat.config.config_from_dict` and :meth:`TrainConfig.resolved`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spat.config import FIELD_NAMES, TrainConfig, config_from_dict
from spat.errors import SpatError
from spat.study.claims import CLAIM_KEYS, Claim, parse_claims
from spat.validation import check_value, field_types, loads_toml, one_line

#: Settings a study sets itself for each cell (not allowed in [train] or a variant).
CELL_FIELDS = ("dataset", "seed", "out_dir", "name", "resume")
STUDY_KEYS = {"name": str, "out_dir": str, "datasets": list, "seeds": list, "baseline": str,
              "description": str, "pairs": list,
              "class_pairs": dict, "most_similar": dict, "plugins": list, "reuse": list}
EVAL_KEYS = {"attacks": list, "n_examples": int, "which": str, "seed": int, "batch_size": int,
             "restarts": int, "sanity_examples": int, "eps": float, "analyze": bool,
             "attack_logits": str}
ENGINE_KEYS = {"kind": str, "workers": int, "threads": int, "cluster": str, "partition": str,
               "timeout_min": int, "cpus_per_job": int, "gpus_per_job": int, "mem_gb": int,
               "array_parallelism": int}
ENGINES = ("local", "submitit")
CLUSTERS = ("slurm", "local", "debug")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class EvalSpec:
    """The evaluation of every cell (``spat eval`` settings) and whether to analyse."""

    attacks: tuple[str, ...] = ("fgsm", "pgd20", "pgd100", "cw20")
    n_examples: int | None = None
    which: str = "best"
    seed: int = 0
    batch_size: int = 500
    restarts: int = 1
    sanity_examples: int = 0
    eps: float | None = None
    analyze: bool = True
    attack_logits: str = "model"


@dataclass(frozen=True)
class EngineSpec:
    """How cells run: ``local`` (a pool of ``workers`` × ``threads``) or ``submitit``
    (``cluster`` slurm, local or debug; one job per cell)."""

    kind: str = "local"
    workers: int | None = None
    threads: int | None = None
    cluster: str = "slurm"
    partition: str | None = None
    timeout_min: int = 240
    cpus_per_job: int | None = None
    gpus_per_job: int = 0
    mem_gb: int | None = None
    array_parallelism: int | None = None


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its directory and fully validated training config."""

    dataset: str
    variant: str
    seed: int
    run_dir: str
    config: dict[str, Any]  # TrainConfig fields (not resolved: device "auto" stays)
    eval: dict[str, Any]
    #: The study's plugins, loaded by the process that runs the cell (spat.utils.plugins).
    plugins: tuple[str, ...] = ()
    #: Folders of other studies (``study.reuse``) where a finished cell with exactly this
    #: cell's settings is copied from instead of run (:func:`spat.study.cell.reusable_source`).
    reuse: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.variant}/seed{self.seed}"


@dataclass(frozen=True)
class StudySpec:
    """A parsed, validated study file."""

    path: str
    name: str
    out_dir: str
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    variants: dict[str, dict[str, Any]]
    baseline: str
    train: dict[str, Any] = field(default_factory=dict)
    eval: EvalSpec = field(default_factory=EvalSpec)
    engine: EngineSpec = field(default_factory=EngineSpec)
    description: str = ""
    #: Per-variant evaluation settings replacing those of [eval] (a variant's ``eval`` table).
    variant_eval: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Named pairs ``(a, b)`` whose paired difference a − b is reported beside the baseline's.
    pairs: tuple[tuple[str, str], ...] = ()
    #: Per dataset, named class pairs ``(a, b)`` (class names as the dataset spells them):
    #: each cell reports the share of class a's misclassified attacked test images predicted
    #: as b (:func:`spat.study.aggregate.class_pair_shares`).
    class_pairs: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    #: The claims the study is run to test (``[[claims]]``), judged by
    #: :mod:`spat.study.claims`'s rule into the "Claims" table of study.md.
    claims: tuple[Claim, ...] = ()
    #: Per dataset, each class's most similar class, fixed before the comparison by a rule
    #: that uses no compared model (``study.most_similar``: a JSON file written by
    #: ``docs/study/most_similar.py``); each cell then reports the "most-similar share".
    most_similar: dict[str, dict[str, str]] = field(default_factory=dict)
    #: ``study.plugins``: the plugins (module names, or .py files as absolute paths) loaded
    #: before the file's settings were checked; each cell's process loads them again
    #: (:attr:`Cell.plugins`).
    plugins: tuple[str, ...] = ()
    #: ``study.reuse``: the folders (``out_dir/<name>``) of other studies whose finished cells
    #: this one copies where their settings are a cell's settings exactly (:attr:`Cell.reuse`).
    reuse: tuple[str, ...] = ()

    def eval_of(self, variant: str) -> dict[str, Any]:
        """The evaluation settings of ``variant``'s cells: [eval] with its overrides."""
        ev = {**dataclasses.asdict(self.eval), **self.variant_eval.get(variant, {})}
        ev["attacks"] = list(ev["attacks"])
        return ev

    @property
    def study_dir(self) -> Path:
        return Path(self.out_dir) / self.name


def _check_table(src: str, where: str, table: Any, keys: dict[str, type]) -> dict[str, Any]:
    """Table ``[where]`` of study file ``src``: known ``keys``, each value of its type
    (:func:`spat.validation.check_value`; ``eps`` also as a fraction such as ``8/255``)."""
    if not isinstance(table, dict):
        raise SpatError(f"{src}: [{where}] must be a table")
    for k in table:
        if k not in keys:
            raise SpatError(f"{src}: unknown key {where}.{k} (valid: {', '.join(keys)})")
    return {k: check_value(v, keys[k], where=src, field=f"{where}.{k}")
            for k, v in table.items()}


def _setting_types() -> dict[str, Any]:
    """Each training setting's type: TrainConfig's fields and the registered methods'
    hyperparameters (a study's plugins loaded first)."""
    from spat.methods import all_hyperparameters

    types_ = {k: t for k, t in field_types(TrainConfig).items() if k in FIELD_NAMES}
    for name, h in all_hyperparameters().items():
        types_.setdefault(name, h.annotation)
    return types_


def _check_train_settings(src: str, where: str, table: Any) -> dict[str, Any]:
    """Keys must be training settings (TrainConfig fields but the per-cell ones, or a registered
    method's hyperparameters) with values of their type, as
    :func:`spat.validation.check_value` checks them for ``spat train --config``."""
    if not isinstance(table, dict):
        raise SpatError(f"{src}: [{where}] must be a table")
    types_ = _setting_types()
    for k in table:
        if k in CELL_FIELDS:
            raise SpatError(f"{src}: {where}.{k} is set by the study for each cell "
                            f"(use [study] datasets/seeds/out_dir)")
        if k not in types_:
            raise SpatError(f"{src}: unknown training setting {where}.{k} "
                            f"(valid: any spat train setting: {', '.join(types_)})")
    return {k: check_value(v, types_[k], where=src, field=f"{where}.{k}")
            for k, v in table.items()}


#: ``[eval]`` keys that are :class:`spat.evaluation.EvalOptions` fields (validated by it); the
#: others (``which``, ``analyze``) are the study's own.
EVAL_OPTION_KEYS = ("attacks", "n_examples", "seed", "batch_size", "restarts",
                    "sanity_examples", "eps", "attack_logits")


def _check_eval(src: str, where: str, table: Any) -> dict[str, Any]:
    """An ``[eval]`` table (or a variant's ``eval`` override): known keys of the right types,
    and values that :class:`spat.evaluation.EvalOptions` accepts (the validator of
    ``spat eval`` itself, so a study refuses what ``spat eval`` would refuse, before any cell
    trains); attacks in canonical order."""
    from spat.evaluation.attacks import require_attacks
    from spat.evaluation.options import EvalOptions

    ev = _check_table(src, where, table, EVAL_KEYS)
    if "attacks" in ev and not all(isinstance(a, str) for a in ev["attacks"]):
        raise SpatError(f"{src}: {where}.attacks must be a list of attack names")
    given = {k: ev[k] for k in EVAL_OPTION_KEYS if k in ev}
    for k, v in given.items():  # one key at a time first, so that the message names it
        try:
            one = EvalOptions(**{k: v})
            if k == "attacks":
                require_attacks(one.attacks, "the list")
        except SpatError as e:
            raise SpatError(f"{src}: {where}.{k}: {e}") from None
    try:
        opts = EvalOptions(**given)
    except SpatError as e:
        raise SpatError(f"{src}: {where}: {e}") from None
    if opts.eps is not None and opts.eps > 1:  # as spat eval for linf; a study keeps [0, 1] units
        raise SpatError(f"{src}: {where}.eps must be in (0, 1] (pixel units), got {opts.eps}")
    for k in given:
        ev[k] = getattr(opts, k)
    if ev.get("which", "best") not in ("best", "last"):
        raise SpatError(f"{src}: {where}.which must be 'best' or 'last', got {ev['which']!r}")
    return ev


def _check_pairs(src: str, raw: list[Any], variants: dict[str, Any]
                 ) -> tuple[tuple[str, str], ...]:
    """``study.pairs``: a list of ``[a, b]`` (two different variants, each pair once)."""
    pairs: list[tuple[str, str]] = []
    for i, p in enumerate(raw):
        where = f"study.pairs[{i}]"
        if not (isinstance(p, list) and len(p) == 2 and all(isinstance(v, str) for v in p)):
            raise SpatError(f"{src}: {where} must be a list of two variant names "
                            f'["a", "b"] (the difference a − b), got {p!r}')
        for v in p:
            if v not in variants:
                raise SpatError(f"{src}: {where}: {v!r} is not a variant "
                                f"(valid: {', '.join(variants)})")
        if p[0] == p[1]:
            raise SpatError(f"{src}: {where} pairs {p[0]!r} with itself")
        if tuple(p) in pairs:
            raise SpatError(f"{src}: {where} lists the pair {p[0]} − {p[1]} twice")
        pairs.append((p[0], p[1]))
    return tuple(pairs)


def _check_most_similar(src: str, raw: dict[str, Any], datasets: list[str]
                        ) -> dict[str, dict[str, str]]:
    """``study.most_similar``: ``{dataset = "file.json"}``, each file a map written by
    ``docs/study/most_similar.py`` (``most_similar``: class name → class name, a class never
    its own). Paths are relative to the current directory, as ``out_dir``. The names are
    checked against the dataset's classes when its results are read."""
    from spat.validation import read_json_object

    out: dict[str, dict[str, str]] = {}
    for ds, path in raw.items():
        where = f"{src}: study.most_similar.{ds}"
        if ds not in datasets:
            raise SpatError(f"{where}: {ds!r} is not a dataset of this study "
                            f"(study.datasets: {', '.join(datasets)})")
        if not isinstance(path, str) or not Path(path).is_file():
            raise SpatError(f"{where} must name an existing JSON file, got {path!r}")
        doc = read_json_object(Path(path))
        m = doc.get("most_similar")
        if (not isinstance(m, dict) or not m
                or not all(isinstance(k, str) and isinstance(v, str) and k != v
                           for k, v in m.items())):
            raise SpatError(f"{where}: {path} holds no 'most_similar' map of class names "
                            f"(each class to another class)")
        out[ds] = dict(m)
    return out


def check_class_names(pairs: Any, names: list[str] | tuple[str, ...], where: str,
                      dataset: str = "this dataset") -> None:
    """Each name of the class ``pairs`` must be one of ``names`` (the dataset's classes); else
    a one-line :class:`SpatError` naming ``where``, the bad name and the valid ones."""
    for a, b in pairs:
        for c in (a, b):
            if c not in names:
                raise SpatError(f"{where}: {c!r} is not a class of {dataset} (classes: "
                                f"{', '.join(names)})")


def _check_class_pair_names(spec: StudySpec, cells: list[Cell]) -> None:
    """The names of ``study.class_pairs`` and ``study.most_similar`` against each dataset's
    classes, before any cell
    runs (where the names are known without the data: see
    :func:`spat.data.dataset_class_names`; else when its results are read)."""
    from spat.data import dataset_class_names

    named = [("class_pairs", ds, list(p)) for ds, p in spec.class_pairs.items()]
    named += [("most_similar", ds, list(m.items())) for ds, m in spec.most_similar.items()]
    for key, ds, pairs in named:
        for data_dir in dict.fromkeys(c.config.get("data_dir") for c in cells
                                      if c.dataset == ds):
            names = dataset_class_names(ds, data_dir)
            if names is not None:
                check_class_names(pairs, names, f"{spec.path}: study.{key}.{ds}", ds)


def _check_class_pairs(src: str, raw: dict[str, Any], datasets: list[str]
                       ) -> dict[str, tuple[tuple[str, str], ...]]:
    """``study.class_pairs``: ``{dataset = [["a", "b"], ...]}`` for datasets of the study, each
    entry two different class names, each pair once per dataset. The names are checked
    against the dataset's classes by :func:`parse_study` (:func:`_check_class_pair_names`)."""
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    for ds, entries in raw.items():
        where = f"study.class_pairs.{ds}"
        if ds not in datasets:
            raise SpatError(f"{src}: {where}: {ds!r} is not a dataset of this study "
                            f"(study.datasets: {', '.join(datasets)})")
        if not isinstance(entries, list) or not entries:
            raise SpatError(f"{src}: {where} must be a non-empty list of [\"a\", \"b\"] "
                            f"class-name pairs, got {entries!r}")
        seen: list[tuple[str, str]] = []
        for i, p in enumerate(entries):
            if not (isinstance(p, list) and len(p) == 2
                    and all(isinstance(c, str) and c for c in p)):
                raise SpatError(f"{src}: {where}[{i}] must be a list of two class names "
                                f'["a", "b"] (a\'s errors that land in b), got {p!r}')
            if p[0] == p[1]:
                raise SpatError(f"{src}: {where}[{i}] pairs class {p[0]!r} with itself")
            if (p[0], p[1]) in seen:
                raise SpatError(f"{src}: {where}[{i}] lists {p[0]} → {p[1]} twice")
            seen.append((p[0], p[1]))
        out[ds] = tuple(seen)
    return out


def _load_study_plugins(src: str, raw: Any) -> tuple[str, ...]:
    """``study.plugins``: module names or paths of .py files (relative to the study file),
    loaded now (:func:`spat.utils.plugins.load_plugins`), so that their methods' settings and
    their attacks are known when the file is checked; returned as loaded (paths absolute)."""
    from spat.utils.plugins import load_plugins, resolve_plugin

    if not all(isinstance(p, str) and p.strip() for p in raw):
        raise SpatError(f"{src}: study.plugins must be a list of module names or .py paths")
    specs = tuple(resolve_plugin(p, base=Path(src).parent) for p in raw)
    try:
        load_plugins(specs)
    except SpatError as e:
        raise SpatError(f"{src}: study.plugins: {e}") from None
    return specs


def _check_reuse(src: str, raw: list[Any], name: str, out_dir: str) -> tuple[str, ...]:
    """``study.reuse``: names of other studies whose folders exist under ``out_dir`` (a typo
    would otherwise cost every cell it meant to save); returned as those folders."""
    out: list[str] = []
    for i, other in enumerate(raw):
        where = f"{src}: study.reuse[{i}]"
        if not isinstance(other, str) or not _NAME.match(other):
            raise SpatError(f"{where} must be the name of another study (its folder under "
                            f"out_dir), got {other!r}")
        if other == name:
            raise SpatError(f"{where} names this study itself")
        folder = Path(out_dir) / other
        if not folder.is_dir():
            raise SpatError(f"{where}: no study folder {folder} (the results of study "
                            f"{other!r} under out_dir {out_dir})")
        if str(folder) in out:
            raise SpatError(f"{where} lists {other!r} twice")
        out.append(str(folder))
    return tuple(out)


def parse_study(data: dict[str, Any], src: str) -> StudySpec:
    """Validate the TOML document ``data`` (from file ``src``) into a :class:`StudySpec`."""
    allowed = ("study", "train", "variants", "eval", "engine", "claims")
    for k in data:
        if k not in allowed:
            raise SpatError(f"{src}: unknown table [{k}] (valid: {', '.join(allowed)})")
    if "study" not in data:
        raise SpatError(f"{src}: missing [study] table (name, datasets, seeds, baseline)")
    st = _check_table(src, "study", data["study"], STUDY_KEYS)
    for req in ("name", "datasets", "seeds"):
        if req not in st:
            raise SpatError(f"{src}: missing study.{req}")
    plugins = _load_study_plugins(src, st.get("plugins", []))
    name = st["name"]
    if not _NAME.match(name):
        raise SpatError(f"{src}: study.name must be a plain folder name (letters, digits, "
                        f"_ . + -), got {name!r}")
    datasets = st["datasets"]
    from spat.data import dataset_names

    if not datasets or not all(isinstance(d, str) for d in datasets):
        raise SpatError(f"{src}: study.datasets must be a non-empty list of dataset names")
    for d in datasets:
        if d not in dataset_names():
            raise SpatError(f"{src}: study.datasets: unknown dataset {d!r} "
                            f"(valid: {', '.join(dataset_names())})")
    if len(set(datasets)) != len(datasets):
        raise SpatError(f"{src}: study.datasets lists a dataset twice")
    seeds = st["seeds"]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                            for s in seeds):
        raise SpatError(f"{src}: study.seeds must be a non-empty list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise SpatError(f"{src}: study.seeds lists a seed twice")
    train = _check_train_settings(src, "train", data.get("train", {}))
    variants_raw = data.get("variants")
    if not isinstance(variants_raw, dict) or not variants_raw:
        raise SpatError(f"{src}: missing [variants.<name>] tables (at least one variant)")
    variants: dict[str, dict[str, Any]] = {}
    variant_eval: dict[str, dict[str, Any]] = {}
    for vname, vtab in variants_raw.items():
        if not _NAME.match(vname):
            raise SpatError(f"{src}: variant name {vname!r} must be a plain folder name")
        if isinstance(vtab, dict) and "eval" in vtab:
            vtab = dict(vtab)
            variant_eval[vname] = _check_eval(src, f"variants.{vname}.eval", vtab.pop("eval"))
        variants[vname] = _check_train_settings(src, f"variants.{vname}", vtab)
    baseline = st.get("baseline", next(iter(variants)))
    if baseline not in variants:
        raise SpatError(f"{src}: study.baseline {baseline!r} is not a variant "
                        f"(valid: {', '.join(variants)})")
    pairs = _check_pairs(src, st.get("pairs", []), variants)
    class_pairs = _check_class_pairs(src, st.get("class_pairs", {}), datasets)
    raw_claims = data.get("claims", [])
    if isinstance(raw_claims, list):
        raw_claims = [_check_table(src, f"claims[{i}]", t, CLAIM_KEYS)
                      for i, t in enumerate(raw_claims)]
    claims = parse_claims(src, raw_claims, list(variants), datasets)
    most_similar = _check_most_similar(src, st.get("most_similar", {}), datasets)
    ev = _check_eval(src, "eval", data.get("eval", {}))
    eng = _check_table(src, "engine", data.get("engine", {}), ENGINE_KEYS)
    if eng.get("kind", "local") not in ENGINES:
        raise SpatError(f"{src}: engine.kind must be one of {', '.join(ENGINES)}, "
                        f"got {eng['kind']!r}")
    if eng.get("cluster", "slurm") not in CLUSTERS:
        raise SpatError(f"{src}: engine.cluster must be one of {', '.join(CLUSTERS)}, "
                        f"got {eng['cluster']!r}")
    for k in ("workers", "threads", "timeout_min", "cpus_per_job", "mem_gb",
              "array_parallelism"):
        if k in eng and eng[k] < 1:
            raise SpatError(f"{src}: engine.{k} must be >= 1, got {eng[k]}")
    if "gpus_per_job" in eng and eng["gpus_per_job"] < 0:
        raise SpatError(f"{src}: engine.gpus_per_job must be >= 0, got {eng['gpus_per_job']}")
    out_dir = st.get("out_dir", "runs/studies")
    reuse = _check_reuse(src, st.get("reuse", []), name, out_dir)
    spec = StudySpec(path=src, name=name, out_dir=out_dir,
                     datasets=tuple(datasets), seeds=tuple(seeds), variants=variants,
                     baseline=baseline, train=train, eval=EvalSpec(**ev),
                     engine=EngineSpec(**eng), description=st.get("description", ""),
                     variant_eval=variant_eval, pairs=pairs,
                     class_pairs=class_pairs, claims=claims, most_similar=most_similar,
                     plugins=plugins, reuse=reuse)
    _check_class_pair_names(spec, plan_cells(spec))  # plan_cells validates every cell's config
    _check_claim_metrics(spec)
    return spec


def study_metrics(spec: StudySpec, dataset: str, variant: str) -> list[str]:
    """The metric names a finished cell of ``variant`` on ``dataset`` can report: clean, each
    evaluated attack, the worst case and class, the excess top share, the validation
    accuracies, the most-similar share (with ``study.most_similar``) and the dataset's named
    class pairs."""
    from spat.evaluation.attacks import attack_name
    from spat.study import metrics as mt

    ev = spec.eval_of(variant)
    return [mt.CLEAN, *[attack_name(a, restarts=ev["restarts"]) for a in ev["attacks"]],
            mt.WORST_CASE, mt.WORST_CLASS, mt.EXCESS, mt.VAL_CLEAN, mt.VAL_ROBUST,
            *([mt.MOST_SIMILAR] if dataset in spec.most_similar else []),
            *[mt.class_pair_metric(a, b) for a, b in spec.class_pairs.get(dataset, ())]]


def _check_claim_metrics(spec: StudySpec) -> None:
    """Each claim's metric is one that all the variants it names report (refused before any
    cell runs, not when the table is written)."""
    for i, c in enumerate(spec.claims):
        for v in (c.variant, c.baseline, *(c.minus or ())):
            known = study_metrics(spec, c.dataset, v)
            if c.metric not in known:
                raise SpatError(f"{spec.path}: claims[{i}] ({c.name}): metric {c.metric!r} is "
                                f"not reported for variant {v!r} (valid: {', '.join(known)})")


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study file (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise SpatError(f"study file not found: {p}")
    try:
        data = loads_toml(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SpatError(f"study file {p} is not UTF-8 text") from None
    except ValueError as e:  # a syntax error, nesting deeper than MAX_NESTING, a 5000-digit int
        raise SpatError(f"study file {p} is not valid TOML: {one_line(e, 160)}") from None
    return parse_study(data, str(p))


def plan_cells(spec: StudySpec) -> list[Cell]:
    """Every cell of the grid (dataset-major, then variant, then seed), each config validated
    (``TrainConfig.resolved()``); a bad setting names the file, the variant and the field."""
    cells = []
    for ds in spec.datasets:
        for vname, vset in spec.variants.items():
            ev = spec.eval_of(vname)
            for seed in spec.seeds:
                parent = spec.study_dir / ds / vname
                values = {**spec.train, **vset, "dataset": ds, "seed": seed,
                          "out_dir": str(parent), "name": f"seed{seed}"}
                src = f"{spec.path}: variants.{vname} (dataset {ds}, seed {seed})"
                try:
                    cfg = config_from_dict(values, source=src)
                    resolved = cfg.resolved()
                    if ev["attack_logits"] == "unit_cosine" and resolved.head != "cosine":
                        raise SpatError(f"eval.attack_logits 'unit_cosine' divides a cosine "
                                        f"head's logits by s, but this variant trains a "
                                        f"{resolved.head} head")
                except SpatError as e:
                    msg = str(e)
                    raise SpatError(msg if msg.startswith(spec.path) else f"{src}: {msg}") \
                        from None
                except TypeError as e:
                    raise SpatError(f"{src}: {e}") from None
                cells.append(Cell(dataset=ds, variant=vname, seed=seed,
                                  run_dir=str(parent / f"seed{seed}"), config=cfg.to_dict(),
                                  eval=ev, plugins=spec.plugins, reuse=spec.reuse))
    return cells
