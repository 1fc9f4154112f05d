"""The training configuration: every knob in one dataclass, resolved per dataset and method.

Precedence: dataclass defaults < per-dataset defaults < per-(dataset, method) settings selected
by the study (:data:`METHOD_DATASET_DEFAULTS`) < TOML file < command line. The *resolved*
config (no ``None`` left) is what a run records in ``config.json`` and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from spat.data.registry import DATASETS, DatasetDefaults
from spat.errors import SpatError
from spat.utils.argtypes import count_or_fraction, fraction, switch
from spat.utils.dataclass_flags import option
from spat.utils.rng import MAX_SEED
from spat.validation import one_line

SCHEDULES = ("piecewise", "cosine", "constant")
DEVICES = ("auto", "cpu", "cuda", "mps")
#: What ``--on-collapse`` may say (spat.train.guard).
ON_COLLAPSE = ("warn", "stop")


def dataset_defaults(dataset: str) -> DatasetDefaults:
    """The defaults of a registered dataset (the ``defaults`` of its record in
    :data:`spat.data.DATASETS`); a name without a record is an error, never another
    dataset's values."""
    record = DATASETS.get(dataset)
    if record is None:
        raise SpatError(f"unknown dataset {dataset!r} (valid: "
                        f"{', '.join(DATASETS)}): it has no defaults record")
    return record.defaults


@dataclass(frozen=True, kw_only=True)
class MethodSettings:
    """A method's settings on one dataset, where the study (docs/study/README.md) selected them
    on the validation split: ``lr`` and, where the study tuned them, β (MART's λ) and the λ
    warm-up ``beta_ramp_epochs``; ``None`` keeps the dataset's lr / the method class's default.
    ``source`` names the study table that selected the values."""

    lr: float | None = None
    beta: float | None = None
    beta_ramp_epochs: int | None = None
    source: str


#: Per (dataset, method) settings selected by the study on the validation split: the one home of
#: these values (docs/study/README.md, tables 0, 0b and 0d, explains each choice; the README's
#: "Datasets and their defaults" shows them). They sit between the dataset's defaults and the
#: TOML file / command line, so ``--lr``, ``--beta`` and ``--beta-ramp-epochs`` still win. The
#: Fashion-MNIST and MNIST values were selected at the study's cut budget (5,000 / 15,000
#: training images, 10 epochs, a training adversary of K = 10 steps), not at these datasets'
#: default budget. A (dataset, method) that is not here keeps the dataset's lr and the class's
#: defaults.
METHOD_DATASET_DEFAULTS: dict[tuple[str, str], MethodSettings] = {
    # digits, table 0 (seeds 100, 101; lr ∈ {0.01, 0.02, 0.05}; β = λ = 6 not tuned). At lr 0.05
    # MART collapsed to a constant output and TRADES and SPAT oscillated.
    ("digits", "pgd_at"): MethodSettings(lr=0.05, source="docs/study table 0"),
    ("digits", "trades"): MethodSettings(lr=0.02, source="docs/study table 0"),
    ("digits", "mart"): MethodSettings(lr=0.02, source="docs/study table 0"),
    ("digits", "spat"): MethodSettings(lr=0.02, source="docs/study table 0"),
    # Fashion-MNIST, table 0b (seed 100; lr ∈ {0.01, 0.02, 0.05}; β = λ = 6 not tuned)
    ("fashion_mnist", "pgd_at"): MethodSettings(lr=0.05, source="docs/study table 0b"),
    ("fashion_mnist", "trades"): MethodSettings(lr=0.02, source="docs/study table 0b"),
    ("fashion_mnist", "mart"): MethodSettings(lr=0.02, source="docs/study table 0b"),
    ("fashion_mnist", "spat"): MethodSettings(lr=0.02, source="docs/study table 0b"),
    # MNIST, table 0d (seed 100, ε 0.3): β 1 beat β 6 for TRADES, MART and SPAT; MART trains
    # only with λ ramped from 0 over 3 epochs (table 0c: without it, chance). Table 0f found
    # MART's lr 0.05 at its stability edge (validation swings; comparison seed 0 collapsed).
    ("mnist", "pgd_at"): MethodSettings(lr=0.05, source="docs/study table 0d"),
    ("mnist", "trades"): MethodSettings(lr=0.05, beta=1.0, source="docs/study table 0d"),
    ("mnist", "mart"): MethodSettings(lr=0.05, beta=1.0, beta_ramp_epochs=3,
                                      source="docs/study tables 0d, 0f"),
    ("mnist", "spat"): MethodSettings(lr=0.05, beta=1.0, source="docs/study table 0d"),
}


def method_settings(dataset: str, method: str) -> MethodSettings | None:
    """The study's selected settings of ``method`` on ``dataset``, or None."""
    return METHOD_DATASET_DEFAULTS.get((dataset, method))


def default_lr(dataset: str, method: str) -> float:
    """The learning rate ``spat train`` uses for ``method`` on ``dataset`` when none is given."""
    sel = method_settings(dataset, method)
    if sel is not None and sel.lr is not None:
        return sel.lr
    return dataset_defaults(dataset).lr


def lr_remedy(cfg: TrainConfig) -> tuple[float, str]:
    """A learning rate that a run which diverged or collapsed at ``cfg.lr`` can train at, and
    why: the (dataset, method) default when it is lower (the study's selection, or the
    dataset's), else a tenth of the current lr (halving a lr that diverged by orders of
    magnitude, as ``--lr 1e6`` → 5e5, diverges again)."""
    assert cfg.lr is not None
    base = default_lr(cfg.dataset, cfg.method)
    if base < cfg.lr:
        sel = method_settings(cfg.dataset, cfg.method)
        why = (f"the study selected {base:g} for {cfg.method} on {cfg.dataset}, {sel.source}"
               if sel is not None and sel.lr is not None
               else f"the {cfg.dataset} default")
        return base, why
    return cfg.lr / 10, "a tenth of the current lr"


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run depends on. ``None`` means "the dataset's/method's default".

    Units: ``eps`` and ``step_size`` in [0,1] pixel units (the CLI accepts ``8/255``); ``lr`` is
    the SGD learning rate at batch size ``batch_size`` (global, over all ranks).

    Each field is also a ``spat train`` flag (``--step-size`` for ``step_size``), derived from
    the field's type and :func:`~spat.utils.dataclass_flags.option` metadata (help text, option
    group, parser) by :mod:`spat.train.command`: a new field needs no edit of the command
    line's code.

    The method's hyperparameters are not fields here: they are the method classes' own fields
    (:func:`spat.methods.base.knob`), held in :attr:`hyperparameters` (name → value; ``None`` or
    absent: the method's default). They read and construct as if they were fields
    (``TrainConfig(method="spat", beta=3).beta``, ``dataclasses.replace(cfg, m=0.1)``; a
    hyperparameter of a registered method that is not set reads ``None``), and
    :meth:`to_dict` writes them as top-level keys, so ``config.json`` and a TOML file hold
    ``beta = 3`` beside ``epochs``. A plugin's method brings its own with no edit here.
    """

    # data
    dataset: str = option("digits", "one of: {datasets} (default digits)", group="data")
    data_dir: str | None = option(
        None, "folder holding the dataset in torchvision's layout (npz: the .npz file)")
    download: bool = option(False, "download missing data (checksums verified)")
    val_size: float = option(0.1, "validation split carved from the training set: a count or a "
                             "fraction", parse=count_or_fraction)
    train_subset: int | None = option(
        None, "train on this many training examples (fixed by the seed)")
    # model
    model: str | None = option(None, "one of: {models}, or wrn<depth>_<width> (default: the "
                               "dataset's)", group="model")
    head: str | None = option(  # None: the method's (MethodDefaults.default_head)
        None, "classifier head: linear or cosine (SPAT's; {head_default})")
    cosine_scale: float = option(8.0, "SPAT's s, the cosine head's scale (inverse temperature)")
    # method
    method: str = option("pgd_at", "one of: {methods} (default pgd_at)", group="method")
    eps: float | None = option(None, "ε of the L∞/L2 ball in [0,1] units; accepts 8/255 "
                               "(default: the dataset's)", parse=fraction)
    step_size: float | None = option(
        None, "attack step size η (accepts 2/255; default: the dataset's)", parse=fraction)
    steps: int | None = option(
        None, "attack steps K of the training adversary (default: the dataset's)")
    norm: str = option("linf", "threat model: linf or l2")
    init: str | None = option(None, "attack random start: uniform, normal (x+0.001·N(0,I)) or "
                              "none (default: the method's)")
    # the method's hyperparameters, each a field of its method class (no flag of its own: each
    # hyperparameter is one, spat.train.command); compared but not hashed (a dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict, hash=False)
    # optimisation
    epochs: int | None = option(None, "number of epochs (default: the dataset's)",
                                group="optimisation")
    batch_size: int | None = option(None, "global batch size (default: the dataset's)")
    lr: float | None = option(None, "SGD learning rate (default: the study's selection for the "
                              "dataset and method, else the dataset's; the README lists them, "
                              "with the β and MART ramp selected on MNIST)")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float | None = option(None, "weight decay (default: the dataset's)")
    nesterov: bool = option(False, "Nesterov momentum")
    schedule: str = option("piecewise", "piecewise (×0.1 at 75% and 90% of the epochs), cosine "
                           "or constant (default piecewise)")
    # validation and test
    val_steps: int = option(10, "PGD steps of the per-epoch validation attack",
                            group="evaluation")
    test_steps: int = option(20, "PGD steps of the final test attack")
    test_subset: int | None = option(
        None, "final test on this many examples (a fixed random subset; default all)")
    eval_batch_size: int = option(512, "batch size of the evaluation attacks", hidden=True)
    # runtime
    seed: int = option(0, "random seed", group="runtime")
    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:N, mps")
    # fast path, "auto" | "on" | "off" (spat.utils.hardware; resolved per device in env.json)
    amp: str = option("auto", "bf16 autocast of the training step (default auto: the faster, "
                      "timed when the run starts; bf16 is tried on CUDA and on a CPU with "
                      "native bf16, AVX512-BF16/AMX; evaluation is always fp32)", parse=switch,
                      metavar="{auto,on,off}")
    channels_last: str = option("auto", "NHWC memory format (default auto: NHWC or NCHW, "
                                "whichever step is faster, timed when the run starts)",
                                parse=switch, metavar="{auto,on,off}")
    compile: str = option("auto", "torch.compile the training model (default auto: off on a "
                          "CPU; on CUDA timed for long runs; a bare --compile means on)",
                          parse=switch,
                          metavar="{auto,on,off}", nargs="?", const="on")
    deterministic: bool = option(False, "deterministic kernels")
    out_dir: str = option("runs", "parent folder of run directories")
    name: str | None = option(
        None, "run directory name (default: time_dataset_model_method_seed)")
    tensorboard: bool = option(False, "also log losses, learning rate, accuracies and the "
                               "validation confusion matrix to RUN/tensorboard/ (needs the "
                               "tensorboard package; metrics.jsonl stays the record)")
    # the collapse and plateau guard (spat.train.guard)
    on_collapse: str = option("warn", "when the guard sees a collapse, a divergence or a "
                              "plateau at chance: warn (one line, recorded in metrics.jsonl "
                              "and summary.json) or stop (exit 2; the last good checkpoint "
                              "kept) (default warn)", choices=ON_COLLAPSE)
    plateau_epochs: int = option(10, "the guard's plateau: flag a run whose accuracy has not "
                                 "left chance after this many epochs")

    # ------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        """A method hyperparameter as an attribute: its value, or ``None`` when it is not set
        (the method's default) but some registered method has it."""
        if name.startswith("__") or name == "hyperparameters":
            raise AttributeError(name)
        hp = self.__dict__.get("hyperparameters", {})
        if name in hp:
            return hp[name]
        from spat.methods import METHODS

        if any(cls.takes(name) for cls in METHODS.values()):
            return None
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def defaults(self) -> DatasetDefaults:
        return dataset_defaults(self.dataset)

    def resolved(self) -> TrainConfig:
        """Fill every ``None`` from the dataset's and method's defaults and validate: the
        settings as given first (a hyperparameter the method lacks included: a study's
        ``[train]`` may set ``beta`` for every variant, and PGD-AT ignores it), then the
        resolved config, which holds exactly the method's own hyperparameters."""
        from spat.methods import METHODS

        self.validate()
        d = self.defaults()
        cls = METHODS[self.method]  # the method's own defaults (spat.methods.base.MethodDefaults)
        sel = method_settings(self.dataset, self.method)
        epochs = d.epochs if self.epochs is None else self.epochs
        given = self.hyperparameters
        knobs = {k: given.get(k, v) for k, v in cls.hyperparameters().items()}
        if sel is not None:
            if "beta" not in given and sel.beta is not None and cls.takes("beta"):
                knobs["beta"] = sel.beta
            if ("beta_ramp_epochs" not in given and sel.beta_ramp_epochs is not None
                    and cls.takes("beta_ramp_epochs")):
                # a default warm-up shorter than the run, so that a short run (--epochs 2)
                # still reaches the full λ (an explicit value that is too long is refused)
                knobs["beta_ramp_epochs"] = max(0, min(sel.beta_ramp_epochs, epochs - 1))
        out = dataclasses.replace(
            self,
            model=self.model or d.model,
            head=self.head or cls.default_head,
            eps=d.eps if self.eps is None else self.eps,
            step_size=d.step_size if self.step_size is None else self.step_size,
            steps=d.steps if self.steps is None else self.steps,
            init=self.init or cls.default_init,
            hyperparameters=knobs,
            epochs=epochs,
            batch_size=d.batch_size if self.batch_size is None else self.batch_size,
            lr=default_lr(self.dataset, self.method) if self.lr is None else self.lr,
            weight_decay=d.weight_decay if self.weight_decay is None else self.weight_decay,
            **_fast_path_switches(self),
        )
        out.validate()
        return out

    def validate(self) -> None:
        """Range checks; each failure is a one-line :class:`SpatError`."""
        from spat.attacks.geometry import INITS, check_norm
        from spat.data import dataset_names
        from spat.methods import METHODS, all_hyperparameters, knob_range, supporting
        from spat.models import HEADS, model_names
        from spat.models.heads import COSINE_SCALE

        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise SpatError(msg)

        if self.dataset not in dataset_names():
            from spat.errors import unknown_name

            raise unknown_name("dataset", self.dataset, dataset_names())
        if self.method not in METHODS:
            from spat.errors import unknown_name

            raise unknown_name("method", self.method, list(METHODS))
        if self.model is not None and not self.model.startswith("wrn"):
            check(self.model in model_names(),
                  f"unknown model {self.model!r} (valid: {', '.join(model_names())})")
        if self.head is not None:
            check(self.head in HEADS, f"unknown head {self.head!r} (valid: {', '.join(HEADS)})")
        check(self.schedule in SCHEDULES,
              f"unknown schedule {self.schedule!r} (valid: {', '.join(SCHEDULES)})")
        check(self.device in DEVICES or self.device.startswith("cuda:"),
              f"unknown device {self.device!r} (valid: {', '.join(DEVICES)}, cuda:N)")
        check_norm(self.norm)
        check(self.on_collapse in ON_COLLAPSE, f"unknown on-collapse action "
              f"{self.on_collapse!r} (valid: {', '.join(ON_COLLAPSE)})")
        check(self.plateau_epochs >= 1, f"plateau epochs must be >= 1, got {self.plateau_epochs}")
        if self.init is not None:
            check(self.init in INITS,
                  f"unknown random start {self.init!r} (valid: {', '.join(INITS)})")
        for key in ("eps",):
            v = getattr(self, key)
            if v is not None:
                check(0.0 <= v <= 1.0 and math.isfinite(v), f"{key} must be in [0, 1], got {v}")
        if self.step_size is not None:
            check(0.0 < self.step_size <= 1.0, f"step size must be in (0, 1], got {self.step_size}")
        for key in ("steps", "val_steps", "test_steps", "epochs", "batch_size", "eval_batch_size"):
            v = getattr(self, key)
            if v is not None:
                check(v >= 1, f"{key.replace('_', ' ')} must be >= 1, got {v}")
        for key in COUNT_FIELDS:  # a bound where they enter: 10**400 epochs overflowed later
            v = getattr(self, key)
            if v is not None:
                check(v <= MAX_COUNT, f"{key.replace('_', ' ')} must be <= {MAX_COUNT}, got "
                      f"{_show_int(v)}")
        check(0 <= self.seed <= MAX_SEED,
              f"seed must be in [0, 2**63 - 1], got {_show_int(self.seed)}")
        if self.lr is not None:
            check(self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr}")
        if self.weight_decay is not None:
            check(self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}")
        check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        COSINE_SCALE.check(self.cosine_scale, "cosine scale")
        known = all_hyperparameters()
        for key, v in self.hyperparameters.items():  # each in the range its class declares
            if key not in known:
                raise SpatError(f"unknown hyperparameter {key!r} (those of the registered "
                                f"methods: {', '.join(known)})")
            valid = knob_range(key, self.method)
            if valid is not None:
                valid.check(v, key)
            if isinstance(v, int) and not isinstance(v, bool):  # counts: as COUNT_FIELDS
                check(v <= MAX_COUNT, f"{key.replace('_', ' ')} must be <= {MAX_COUNT}, got "
                      f"{_show_int(v)}")
        check(0 <= self.val_size <= MAX_COUNT,
              f"validation size must be in [0, {MAX_COUNT}], got {_show_int(self.val_size)}")
        if self.test_subset is not None:
            check(self.test_subset >= 1, f"test subset must be >= 1, got {self.test_subset}")
        if self.name is not None:
            check(bool(self.name) and self.name not in (".", "..") and "/" not in self.name
                  and "\\" not in self.name and not self.name.startswith("."),
                  f"run name must be a plain folder name (no '/', not starting with '.'), "
                  f"got {self.name!r}")
            size = len(self.name.encode("utf-8", "surrogateescape"))
            check(size <= MAX_NAME_BYTES, f"run name must be at most {MAX_NAME_BYTES} bytes "
                  f"(a folder name; the file system takes 255 with room for temporary "
                  f"names), got {size}")
        if self.train_subset is not None:
            check(self.train_subset >= 1, f"train subset must be >= 1, got {self.train_subset}")
        cls = METHODS[self.method]
        if self.hcp_ecp and not cls.takes("hcp_ecp"):
            raise SpatError(f"--hcp-ecp needs a method with a consistency term "
                            f"(valid: {', '.join(supporting('hcp_ecp'))}), got {self.method!r}")
        self_paced = (cls.default("self_paced_ce") if self.self_paced_ce is None
                      else self.self_paced_ce)
        if self_paced and self.head == "linear":
            raise SpatError(
                "the self-paced cross-entropy needs the cosine head (use --head cosine)"
            )
        if self.head == "linear" and cls.linear_head_error:
            raise SpatError(cls.linear_head_error)
        self._validate_warmups(cls)

    def _validate_warmups(self, cls: Any) -> None:
        """The warm-ups (``beta_ramp_epochs``, ``self_paced_after``): whole epochs >= 0, fewer
        than ``epochs`` (else the full β / the self-paced CE is never reached), and only on a
        method with the part they schedule; each failure one line."""
        from spat.methods import supporting

        for key, part in (("beta_ramp_epochs", "a beta/lambda weight to ramp"),
                          ("self_paced_after", "a self-paced cross-entropy to switch on")):
            v = getattr(self, key)
            if v is None or v == 0:
                continue
            flag = key.replace("_", " ")
            if v < 0:
                raise SpatError(f"{flag} must be >= 0 (epochs), got {v}")
            if not cls.takes(key):
                raise SpatError(f"{flag} needs a method with {part} "
                                f"(valid: {', '.join(supporting(key))}), got {self.method!r}")
            if self.epochs is not None and v >= self.epochs:
                raise SpatError(f"{flag} must be < epochs ({self.epochs}), got {v}: the warm-up "
                                f"would never end")
        if self.self_paced_after:
            on = self.self_paced_ce if self.self_paced_ce is not None else cls.default(
                "self_paced_ce")
            if not on:
                raise SpatError(f"self paced after needs the self-paced cross-entropy on "
                                f"(self_paced_ce = true; on by default only for spat), got "
                                f"method {self.method!r} without it")

    def to_dict(self) -> dict[str, Any]:
        """The settings as one flat table (what ``config.json`` and checkpoints hold): the
        fields, with the method's hyperparameters as top-level keys in place of
        :attr:`hyperparameters`."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "hyperparameters":
                out.update(self.hyperparameters)
            else:
                out[f.name] = getattr(self, f.name)
        return out


def _accept_hyperparameter_keywords(cls: type[TrainConfig]) -> None:
    """Let ``cls(...)`` (and so ``dataclasses.replace``) take a method's hyperparameters as
    keywords beside the fields: ``TrainConfig(method="spat", beta=3)``. A ``None`` is left out
    (the method's default); a name that no registered method has is a ``TypeError``, as an
    unknown field is."""
    generated = cls.__init__

    def __init__(self: TrainConfig, **kwargs: Any) -> None:
        from spat.methods import METHODS

        hp = dict(kwargs.pop("hyperparameters", None) or {})
        for key in [k for k in kwargs if k not in FIELD_NAMES]:
            if not any(c.takes(key) for c in METHODS.values()):
                raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {key!r}")
            hp[key] = kwargs.pop(key)
        generated(self, **kwargs,  # type: ignore[misc]
                  hyperparameters={k: v for k, v in hp.items() if v is not None})

    __init__.__doc__ = generated.__doc__
    cls.__init__ = __init__  # type: ignore[method-assign]


#: TrainConfig's own settings (each a field and a flag); the method hyperparameters are
#: :func:`setting_names`' others.
FIELD_NAMES = tuple(f.name for f in fields(TrainConfig) if f.name != "hyperparameters")
_accept_hyperparameter_keywords(TrainConfig)


def setting_names() -> tuple[str, ...]:
    """Every key a config file, a study table or ``config.json`` may hold: TrainConfig's fields
    and every registered method's hyperparameters (plugins' included)."""
    from spat.methods import all_hyperparameters

    return FIELD_NAMES + tuple(k for k in all_hyperparameters() if k not in FIELD_NAMES)


def recorded_default(key: str, method: str) -> Any:
    """What a saved config that lacks ``key`` (written before the setting existed) meant: the
    method class's default for one of ``method``'s hyperparameters, else TrainConfig's field
    default (``None`` where the default depends on the dataset: such a key was always
    recorded). The study's staleness rule (:func:`spat.study.cell.config_mismatch`)."""
    from spat.methods import METHODS

    cls = METHODS.get(method)
    if cls is not None and cls.takes(key):
        return cls.default(key)
    f = next((f for f in fields(TrainConfig) if f.name == key), None)
    if f is None or f.default is dataclasses.MISSING:
        return None
    return f.default


#: The counts (epochs, steps, sizes): each at most :data:`MAX_COUNT`, refused where the
#: configuration is validated, so no count overflows later (``float(10**400)``) after the run
#: directory was made (an integer hyperparameter too).
COUNT_FIELDS = ("steps", "val_steps", "test_steps", "epochs", "batch_size", "eval_batch_size",
                "train_subset", "test_subset")
MAX_COUNT = 10**9
#: A run name is a folder name: at most this many bytes (file systems take 255; the overwrite's
#: temporary ``.NAME.old.XXXXXXXX.tmp`` needs 18 more).
MAX_NAME_BYTES = 200


def _show_int(v: float) -> str:
    """A number for a message: a huge integer as its number of digits (str() of an integer
    over 4300 digits raises)."""
    if isinstance(v, int) and v.bit_length() > 64:
        return f"an integer of about {int(v.bit_length() * 0.30103) + 1} digits"
    return str(v)


def _fast_path_switches(cfg: TrainConfig) -> dict[str, str]:
    """``amp``/``channels_last``/``compile`` as "auto"/"on"/"off" (older configs stored
    booleans, and ``None`` for auto); an invalid value is a one-line :class:`SpatError`."""
    from spat.utils.hardware import normalize_switch

    try:
        return {k: normalize_switch(getattr(cfg, k), k)
                for k in ("amp", "channels_last", "compile")}
    except ValueError as e:
        raise SpatError(str(e)) from None


def config_from_dict(d: dict[str, Any], *, source: str = "config") -> TrainConfig:
    """A :class:`TrainConfig` from a plain dict (a TOML file, config.json, a checkpoint), every
    value type-checked against the field annotations — a method hyperparameter against its
    method class's field (the config's method's, else the first registered method's that has
    it); unknown keys are a one-line error."""
    from spat.methods import METHODS, all_hyperparameters
    from spat.validation import check_fields, check_value

    if not isinstance(d, dict):
        raise SpatError(f"{source}: expected a table/object of settings, got "
                        f"{type(d).__name__}")
    known = all_hyperparameters()
    unknown = sorted(str(k) for k in d if k not in FIELD_NAMES and k not in known)
    if unknown:
        raise SpatError(f"{source}: unknown key(s) {', '.join(unknown)} "
                        f"(valid: {', '.join(setting_names())})")
    # every value type-checked from the annotations (``epochs = 2.5``, ``name = 5``,
    # ``deterministic = "yes"`` are refused naming the file and the field); ranges: validate()
    values = check_fields({k: v for k, v in d.items() if k in FIELD_NAMES}, TrainConfig,
                          where=source)
    cls = METHODS.get(values.get("method", TrainConfig.method))
    hp: dict[str, Any] = {}
    for key in (k for k in d if k in known and k not in FIELD_NAMES):
        annotation = (typing.get_type_hints(cls)[key] if cls is not None and cls.takes(key)
                      else known[key].annotation)
        hp[key] = check_value(d[key], annotation | None, where=source, field=key)
    return TrainConfig(**values, hyperparameters=hp)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a training config file: TOML (keys flat or under a ``[train]`` table) or JSON (a
    run's recorded ``config.json``, so that ``spat train --config RUN/config.json`` trains the
    same run again). A JSON ``null`` means "the default", as a key left out of a TOML file does
    (TOML has no null), so a recorded config and its TOML transcription are the same config."""
    from spat.validation import loads_json, loads_toml

    p = Path(path)
    if not p.is_file():
        raise SpatError(f"config file not found: {p}")
    kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
    try:
        text = p.read_text(encoding="utf-8")
        data = loads_json(text) if kind == "JSON" else loads_toml(text)
    except (UnicodeDecodeError, OSError) as e:
        raise SpatError(f"config file {p} is unreadable ({type(e).__name__}: "
                        f"{one_line(e, 160)})") from None
    except ValueError as e:  # a syntax error, nesting deeper than MAX_NESTING, a 5000-digit int
        raise SpatError(f"config file {p} is not valid {kind}: {one_line(e, 160)}") from None
    if not isinstance(data, dict):
        raise SpatError(f"config file {p}: expected a table of settings, got "
                        f"{type(data).__name__}")
    if "train" in data and isinstance(data["train"], dict):
        data = {**{k: v for k, v in data.items() if k != "train"}, **data["train"]}
    return {k: v for k, v in data.items() if v is not None}


def parse_fraction(text: str) -> float:
    """``"8/255"`` → 0.03137…, ``"0.031"`` → 0.031 (ε and step sizes on the command line)."""
    from spat.validation import parse_fraction_or_none

    v = parse_fraction_or_none(str(text))
    if v is None:
        raise SpatError(f"not a number or fraction: {text!r} (examples: 0.031, 8/255)")
    return v
