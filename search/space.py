"""Load a YAML search space once into typed objects, and fail fast with one clear line.

A space file has five sections (see spaces/README.md): `data`, `search`, `resources`,
`checkpoint` and `space`. Under `space:` each key is a knob of `trainables.params.TrialParams`
and its value is either a constant or one search entry:

    lr:         {float: [1.0e-4, 1.0e-1], log: true}
    batch_size: {choice: [32, 64, 128]}
    cnn_blocks: {int: [2, 4], when: {model: cnn}}     # sampled only when model == cnn

Every error names the file, the key path, the bad value and what is allowed.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from search.duration import parse_duration
from search.errors import UserError
from trainables.context import Resources
from trainables.models import limits
from trainables.params import KNOBS, TrialParams, knob_metadata, nesterov_problem

METRICS = {"val_acc": "max", "val_macro_f1": "max", "val_min_recall": "max", "val_loss": "min"}
# what a trial's model costs (trainables.models.footprint): objectives after the first, and constraints
COSTS = {name: "min" for name in limits.COSTS}
OBJECTIVES = {**METRICS, **COSTS}  # each with the direction it is optimised in
DEFAULT_TRIALS = 8  # num_samples: auto without a time budget


class SpaceError(UserError):
    """A problem with a space file; str() is the one line shown to the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitSpec(_Strict):
    train: float = Field(0.70, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _sums_to_one(self):
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {self.train + self.val + self.test:g}")
        return self


class DataSpec(_Strict):
    source: str = Field("animal-mnist", description="image folder, or 'animal-mnist' (embedded)")
    split: SplitSpec = SplitSpec()
    limit_per_class: Optional[int] = Field(None, ge=3)
    cache_dir: Optional[str] = Field(None, description="where decoded images are cached; default "
                                                          "~/.cache/hpo-finetune (or HPO_CACHE_DIR)")
    cache_max_gb: Optional[float] = Field(None, gt=0, allow_inf_nan=False,
                                          description="cap on the decoded-image cache; least recently "
                                                      "used files go first; default: HPO_CACHE_MAX_GB, "
                                                      "else 20")
    conflicting_labels: Literal["drop", "keep"] = Field(
        "drop", description="byte-identical images filed under different classes: drop them (their label is "
                            "unknowable) or keep every copy with its own label")


class SchedulerSpec(_Strict):
    max_t: Optional[int] = Field(None, ge=1, description="ASHA's last rung in epochs; default: the largest `epochs`")
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3, gt=1)


Mode = Literal["max", "min"]


class ConstraintsSpec(_Strict):
    """Largest allowed figures of a trial's model (trainables.models.footprint); a configuration over one
    is not trained, and the sampler is told it is infeasible."""

    max_latency_ms: Optional[float] = Field(None, gt=0, description="batch-1 latency on one CPU thread, at the "
                                                                     "trial's image size, in ms")
    max_params_m: Optional[float] = Field(None, gt=0, description="parameters, in millions")
    max_model_mb: Optional[float] = Field(None, gt=0, description="size of the model's weights, in MB")

    def limits(self) -> dict[str, float]:
        """Figure name -> largest allowed value, for the constraints set (TrialContext.limits)."""
        return {name.removeprefix("max_"): v for name, v in self.model_dump().items() if v is not None}


class SearchSpec(_Strict):
    metric: Union[str, list[str]] = Field(
        "val_acc", description="the objective, or a list for a multi-objective search: a validation metric first "
                               "(ASHA stops trials on it), then costs of the model, e.g. [val_acc, latency_ms]")
    mode: Union[Mode, list[Mode], None] = None
    constraints: ConstraintsSpec = ConstraintsSpec()
    num_samples: Optional[int] = Field(None, ge=1, description="trials at most; auto (the default): as many as "
                                                              "search.time allows, or 8 without a time budget")
    max_concurrent_trials: Union[int, Literal["auto"]] = "auto"
    time: Optional[float] = Field(None, description="the search's time budget, e.g. 10m, 90s, 1h30m: trials start "
                                                     "while they can reach their first rung in it, and stop at "
                                                     "their first report after it")
    seed: int = 0
    startup_trials: Optional[int] = Field(None, ge=1, description="random trials before TPE takes over")
    max_failures: int = Field(0, ge=0, description="retries of a failed trial, from its last checkpoint")
    scheduler: SchedulerSpec = SchedulerSpec()
    points_to_evaluate: list[dict[str, Any]] = []

    @model_validator(mode="before")
    @classmethod
    def _old_time_key(cls, data):
        """`time_budget_s`, the budget's earlier name, is still read (as seconds; null: no budget,
        as `--set search.time_budget_s=null` always said)."""
        if isinstance(data, dict) and "time_budget_s" in data:
            if data.get("time") is not None and data["time_budget_s"] is not None:
                raise ValueError("time and time_budget_s both set; give time (e.g. 10m) alone")
            data = {k: v for k, v in data.items() if k != "time_budget_s"} | {"time": data["time_budget_s"]}
        return data

    @field_validator("num_samples", mode="before")
    @classmethod
    def _auto_samples(cls, value):
        return None if value == "auto" else value

    @field_validator("time", mode="before")
    @classmethod
    def _duration(cls, value):
        return None if value is None else parse_duration(value)

    @property
    def max_trials(self) -> int | None:
        """Trials at most: num_samples; else none with a time budget (it decides), else 8."""
        return self.num_samples or (None if self.time else DEFAULT_TRIALS)

    @field_validator("metric")
    @classmethod
    def _known_objectives(cls, metric):
        names = metric if isinstance(metric, list) else [metric]
        if not names:
            raise ValueError("an empty list; give the objective, e.g. val_acc, or [val_acc, latency_ms]")
        for name in names:
            if name not in OBJECTIVES:
                listed = ", ".join(METRICS) if isinstance(metric, str) else ", ".join(OBJECTIVES)
                raise ValueError(f"unknown objective {name!r}; {_did_you_mean(name, OBJECTIVES)}allowed: {listed}"
                                 + ("" if isinstance(metric, list) else "; a list adds costs: [val_acc, latency_ms]"))
        _check_objectives(names)
        return names[0] if len(names) == 1 else names

    @field_validator("mode")
    @classmethod
    def _mode_matches_metric(cls, mode, info):
        metric = info.data.get("metric")
        if metric is None or mode is None:  # a bad metric is said on its own; no mode: each objective's own
            return mode
        names = metric if isinstance(metric, list) else [metric]
        modes = mode if isinstance(mode, list) else [mode] * len(names)
        if len(modes) != len(names):
            raise ValueError(f"{len(modes)} directions for {len(names)} objectives; drop mode (each objective's "
                             "own direction is used) or give one per objective")
        for name, got in zip(names, modes):
            want = OBJECTIVES[name]
            if got != want:
                raise ValueError(f"metric {name} is optimised with mode {want!r}, not {got!r}")
        return modes if isinstance(metric, list) else modes[0]

    @model_validator(mode="after")
    def _defaults(self):
        if self.mode is None:
            modes = [OBJECTIVES[n] for n in ([self.metric] if isinstance(self.metric, str) else self.metric)]
            self.mode = modes if isinstance(self.metric, list) else modes[0]
        if isinstance(self.max_concurrent_trials, int) and self.max_concurrent_trials < 1:
            raise ValueError("max_concurrent_trials must be 'auto' or >= 1")
        return self

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """(name, mode) of each objective; the first is the one ASHA, checkpoints and early stops follow."""
        if isinstance(self.metric, list):
            return list(zip(self.metric, self.mode))
        return [(self.metric, self.mode)]

    @property
    def asha_metric(self) -> str:
        return self.objectives[0][0]

    @property
    def asha_mode(self) -> str:
        return self.objectives[0][1]


def _check_objectives(names: list[str]) -> None:
    """A multi-objective search ranks trials on a validation metric first (ASHA can only stop trials
    on one objective, and a model's costs are the same at every epoch) and on costs after it."""
    if len(set(names)) < len(names):
        raise ValueError(f"metric lists an objective twice: {names}")
    if names[0] not in METRICS:
        raise ValueError(f"the first objective is the one ASHA stops trials on, so it must be a validation metric "
                         f"({', '.join(METRICS)}), got {names[0]!r}; e.g. metric: [val_acc, {names[0]}]")
    later = [n for n in names[1:] if n not in COSTS]
    if later:
        raise ValueError(f"objectives after the first are costs of the model ({', '.join(COSTS)}), got {later[0]!r}: "
                         "ASHA and the kept checkpoints follow one validation metric, the first")


class CheckpointSpec(_Strict):
    keep: int = Field(2, ge=1, description="best checkpoints kept per trial, by the objective")


class Knob(_Strict):
    """One `space:` entry after parsing: a constant, or a distribution Optuna samples."""

    kind: Literal["const", "choice", "int", "float"]
    value: Any = None
    choices: list[Any] = []
    low: float = 0
    high: float = 0
    log: bool = False
    step: Optional[float] = None
    when: dict[str, list[Any]] = {}

    def values(self) -> list[Any]:
        """Every value this knob can take that is checkable up front (bounds for ranges)."""
        return {"const": [self.value], "choice": self.choices}.get(self.kind, [self.low, self.high])


class SpaceFile(_Strict):
    name: Optional[str] = None
    data: DataSpec = DataSpec()
    search: SearchSpec = SearchSpec()
    resources: Resources = Resources()  # trainables.context's own type, validated here
    checkpoint: CheckpointSpec = CheckpointSpec()
    space: dict[str, Any] = {}

    # filled by load(): the parsed knobs, in file order
    knobs: dict[str, Knob] = {}

    def max_epochs(self) -> int:
        k = self.knobs.get("epochs")
        return int(max(k.values())) if k else self.search.scheduler.max_t or TrialParams().epochs


_DIST_KEYS = {"choice", "int", "float"}
MAPPING_KNOBS = ("class_multipliers",)  # a bare mapping is their constant value, not a search entry
_ENTRY_KEYS = _DIST_KEYS | {"log", "step", "when"}


def _fields(model: Any) -> dict:
    """The fields of a pydantic model, or of a pydantic dataclass (trainables.context.Resources)."""
    return getattr(model, "model_fields", None) or getattr(model, "__pydantic_fields__", {})


def _allowed_at(loc: tuple) -> list[str]:
    """Field names allowed at a pydantic error location (for did-you-mean)."""
    model: Any = SpaceFile
    for part in loc:
        field = _fields(model).get(part)
        if field is None:
            break
        ann = field.annotation
        model = ann if isinstance(ann, type) and (issubclass(ann, BaseModel) or dataclasses.is_dataclass(ann)) else None
    return list(_fields(model)) if model else []


# names other tools use for our knobs, so that the hint finds them where spelling does not
SYNONYMS = {"learning_rate": "lr", "bs": "batch_size", "img_size": "image_size", "input_size": "image_size",
            "arch": "model", "backbone": "model", "architecture": "model", "num_epochs": "epochs",
            "max_epochs": "epochs", "wd": "weight_decay", "freeze": "unfreeze", "trainable_layers": "unfreeze"}


def _did_you_mean(word: str, allowed) -> str:
    allowed = list(allowed)
    if SYNONYMS.get(str(word)) in allowed:
        return f"did you mean {SYNONYMS[str(word)]!r}? "
    close = difflib.get_close_matches(str(word), allowed, n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}? " if close else ""


def _fail(path: Path, key: str, msg: str) -> SpaceError:
    msg = msg.removeprefix("Value error, ")  # pydantic's prefix to a validator's own message
    return SpaceError(f"{path}: {key}: {msg}" if key else f"{path}: {msg}")


def _format(path: Path, err: ValidationError) -> SpaceError:
    e = err.errors()[0]
    loc = tuple(e["loc"])
    key = ".".join(str(x) for x in loc)
    more = f" (and {err.error_count() - 1} more problem(s))" if err.error_count() > 1 else ""
    if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):  # a model's, a pydantic dataclass's
        allowed = [a for a in _allowed_at(loc[:-1]) if a != "knobs"]
        return _fail(path, key, f"unknown key; {_did_you_mean(loc[-1], allowed)}allowed: {', '.join(allowed)}{more}")
    got = e.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return _fail(path, key, f"{e['msg']}{shown}{more}")


def _parse_knob(path: Path, name: str, raw: Any) -> Knob:
    key = f"space.{name}"
    if not isinstance(raw, dict) or (name in MAPPING_KNOBS and not set(raw) & _ENTRY_KEYS):
        return Knob(kind="const", value=raw)
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        bad = sorted(unknown)[0]
        raise _fail(path, f"{key}.{bad}", f"unknown key; {_did_you_mean(bad, _ENTRY_KEYS)}a search entry is one of "
                                          "{choice: [...]}, {int: [lo, hi]}, {float: [lo, hi]}, "
                                          "with optional log, step, when")
    kinds = _DIST_KEYS & set(raw)
    if len(kinds) != 1:
        raise _fail(path, key, "a search entry needs exactly one of choice, int, float; a constant is written bare")
    kind = kinds.pop()
    spec = raw[kind]
    when = raw.get("when") or {}
    if not isinstance(when, dict):
        raise _fail(path, f"{key}.when", f"must map earlier knobs to a value or list of values, got {when!r}")
    when = {k: v if isinstance(v, list) else [v] for k, v in when.items()}
    if kind == "choice":
        if not isinstance(spec, list) or not spec:
            raise _fail(path, f"{key}.choice", f"must be a non-empty list of values, got {spec!r}")
        if set(raw) & {"log", "step"}:
            raise _fail(path, key, "log and step apply to int and float ranges, not to choice")
        return Knob(kind="choice", choices=spec, when=when)
    if not (isinstance(spec, list) and len(spec) == 2):
        raise _fail(path, f"{key}.{kind}", f"must be a range [low, high], got {spec!r}")
    try:
        caster = int if kind == "int" else float
        low, high = (caster(TypeAdapter(float).validate_python(v)) for v in spec)
        step = TypeAdapter(Optional[float]).validate_python(raw.get("step"))
    except (ValidationError, ValueError):
        raise _fail(path, f"{key}.{kind}", f"bounds must be numbers, got {spec!r}") from None
    if low >= high:
        raise _fail(path, f"{key}.{kind}", f"range [{spec[0]}, {spec[1]}] is {'empty' if low == high else 'inverted'}: "
                                           "need low < high (write a constant for a single value)")
    log = bool(raw.get("log", False))
    if log and low <= 0:
        raise _fail(path, f"{key}.{kind}", f"log scale needs low > 0, got {spec[0]}")
    if log and step:
        raise _fail(path, key, "log and step cannot be combined")
    return Knob(kind=kind, low=low, high=high, log=log, step=step, when=when)


def _check_knob(path: Path, name: str, knob: Knob, earlier: list[str]) -> Knob:
    """Validate each value a knob can take against TrialParams, storing the converted values."""
    key = f"space.{name}"
    if name not in KNOBS:
        raise _fail(path, key, f"unknown knob; {_did_you_mean(name, KNOBS)}knobs: {', '.join(KNOBS)}")
    for dep in knob.when:
        if dep not in earlier:
            raise _fail(path, f"{key}.when.{dep}", f"'when' must name a knob listed above {name!r} in the space; "
                                                   f"earlier knobs: {earlier or 'none'}")

    def conv(v):
        try:
            out = getattr(TrialParams.model_validate({name: v}), name)
        except ValidationError as err:
            raise _fail(path, key, f"{err.errors()[0]['msg']} (got {v!r})") from None
        if name == "pretrained" and isinstance(out, str) and not Path(out).expanduser().is_file():
            raise _fail(path, key, f"weights file {out!r} does not exist; pretrained is true, false or a weights file")
        if name == "model":
            from trainables.models.registry import ModelError, check_name

            try:
                check_name(out)
            except ModelError as me:
                raise _fail(path, key, str(me)) from None
        return out

    if knob.kind == "const":
        knob.value = conv(knob.value)
    elif knob.kind == "choice":
        knob.choices = [_choice_value(path, key, v, conv(v)) for v in knob.choices]
    else:
        conv(int(knob.low) if knob.kind == "int" else knob.low)
        conv(int(knob.high) if knob.kind == "int" else knob.high)
    return knob


def _choice_value(path: Path, key: str, raw: Any, value: Any) -> Any:
    """Optuna samples plain values only: a list or mapping knob is searched in its string form,
    kept as written and parsed by the trial ('512,256', 'cat=2.0')."""
    if not isinstance(value, (list, dict)):
        return value
    if isinstance(raw, (str, int)) and not isinstance(raw, bool):
        return raw
    raise _fail(path, key, f"choice values must be plain values; write {raw!r} as a string, e.g. '512,256' for "
                           "head_hidden or 'cat=2.0' for class_multipliers")


def apply_overrides(raw: dict, overrides: list[str], path: Path) -> dict:
    """`--set a.b=value`: the value is parsed as YAML, so numbers, lists and mappings work."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise SpaceError(f"--set {item!r}: expected KEY=VALUE, e.g. --set search.num_samples=4")
        key, _, text = item.partition("=")
        value = yaml.safe_load(text)
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SpaceError(f"--set {key}: {p!r} is not a section in {path}")
        node[parts[-1]] = value
    return raw


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise SpaceError(f"{path}: space file does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        ctx, mark = getattr(e, "context_mark", None), getattr(e, "problem_mark", None)
        at = ctx or mark
        where = f"line {at.line + 1}, column {at.column + 1}" if at else "unknown position"
        what = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
        raise SpaceError(f"{path}: YAML syntax error at {where}: {what}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: a space file must be a mapping of sections (data, search, resources, checkpoint, "
                         f"space), got {type(raw).__name__}")
    return raw


def load(path: str | Path, overrides: list[str] = ()) -> SpaceFile:
    """Read, override, validate. Raises SpaceError with one line naming file, key and what is allowed."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path), list(overrides), path)
    if "knobs" in raw:
        raise _fail(path, "knobs",
                    f"unknown key; allowed: {', '.join(a for a in SpaceFile.model_fields if a != 'knobs')}")
    try:
        spec = SpaceFile.model_validate(raw)
    except ValidationError as err:
        raise _format(path, err) from None
    if not isinstance(raw.get("space", {}), dict):
        raise _fail(path, "space", "must be a mapping of knob: constant or search entry")
    earlier: list[str] = []
    for name, value in spec.space.items():
        spec.knobs[name] = _check_knob(path, name, _parse_knob(path, name, value), earlier)
        earlier.append(name)
    _check_consistency(path, spec)
    return spec


def _check_consistency(path: Path, spec: SpaceFile) -> None:
    k = spec.knobs
    max_t = spec.search.scheduler.max_t
    if "epochs" in k and max_t is not None and spec.max_epochs() > max_t:
        raise _fail(path, "space.epochs", f"can reach {spec.max_epochs()} but search.scheduler.max_t is {max_t}; "
                                          "raise max_t or lower epochs")
    if spec.search.scheduler.grace_period > spec.max_epochs():
        raise _fail(path, "search.scheduler.grace_period",
                    f"{spec.search.scheduler.grace_period} is more than the {spec.max_epochs()} epochs a trial runs")
    models_ = k["model"].values() if "model" in k else [TrialParams.model_fields["model"].default]
    pre = k.get("pretrained")
    if pre is not None and any(v is not False for v in pre.values()):
        _check_pretrained_models(path, models_, pre.when.get("model"))
    _check_applies(path, spec, models_)
    for i, point in enumerate(spec.search.points_to_evaluate):
        for name, v in point.items():
            if name not in k or k[name].kind == "const":
                raise _fail(path, f"search.points_to_evaluate[{i}].{name}",
                            f"not a searched knob; searched: {[n for n, kb in k.items() if kb.kind != 'const']}")
            where = f"search.points_to_evaluate[{i}].{name}"
            try:
                value = getattr(TrialParams.model_validate({name: v}), name)
            except ValidationError as err:
                raise _fail(path, where, f"{err.errors()[0]['msg']} (got {v!r})") from None
            kb = k[name]
            if kb.kind == "choice":
                match = [c for c in kb.choices if c == v or c == value]
                if not match:
                    raise _fail(path, where, f"{v!r} is not one of the knob's choices {kb.choices}")
                point[name] = match[0]
            elif not kb.low <= value <= kb.high:
                raise _fail(path, where, f"{v!r} is outside the knob's range [{kb.low:g}, {kb.high:g}]")
            else:
                point[name] = value


def _check_pretrained_models(path: Path, models_: list, conds: list | None) -> None:
    """Pretrained weights may be asked (where `when: {model: CONDS}` allows) only of models the
    registry says can start from them."""
    from trainables.models.registry import can_be_pretrained

    for m in models_:
        if not can_be_pretrained(m) and (conds is None or m in conds):
            raise _fail(path, "space.pretrained", f"model {m!r} has no pretrained weights; give pretrained "
                                                  f"`when: {{model: [<timm models>]}}` or drop {m} from model")


# knob -> (the knob it depends on, the values of that knob where it has an effect), and the
# knobs of pretrained models only: both read from the knobs' own metadata (trainables.params).
APPLIES_WHEN = {name: next(iter(where.items())) for name, where in knob_metadata("applies_when").items()}
PRETRAINED_ONLY = tuple(knob_metadata("pretrained_only"))


def _check_applies(path: Path, spec: SpaceFile, models_: list) -> None:
    """A knob set for a model it can never affect is a mistake; one searched where it sometimes
    does not apply needs a `when:` so that TPE does not learn from values that changed nothing."""
    k = spec.knobs
    for name, (dep, where) in APPLIES_WHEN.items():
        if name not in k:
            continue
        can = models_ if dep == "model" else (k[dep].values() if dep in k else [TrialParams.model_fields[dep].default])
        if not set(can) & set(where):
            raise _fail(path, f"space.{name}", f"applies to {dep} {' or '.join(map(repr, where))} only, but {dep} "
                                               f"can only be {can}")
        if k[name].kind != "const" and not set(can) <= set(where) and not set(k[name].when.get(dep, can)) <= set(where):
            raise _fail(path, f"space.{name}", f"is searched but applies to {dep} {' or '.join(map(repr, where))} "
                                               f"only: add when: {{{dep}: {where[0] if len(where) == 1 else where}}}")
    hidden = k["head_hidden"].values() if "head_hidden" in k else [[]]
    for name in ("head_batchnorm", "head_dropout"):
        if name in k and all(not TrialParams.model_validate({"head_hidden": h}).head_hidden for h in hidden):
            raise _fail(path, f"space.{name}", "acts on the head's hidden layers, but head_hidden gives none; "
                                               "set head_hidden (e.g. [256]) or drop " + name)
    mom, nest = k.get("momentum"), k.get("nesterov")
    problem = nest is not None and mom is not None and nesterov_problem(mom.values(), nest.values())
    if problem:
        raise _fail(path, "space.nesterov", f"{problem}, but momentum is 0")
    pre = k["pretrained"].values() if "pretrained" in k else [False]
    for name in PRETRAINED_ONLY:
        if name not in k:
            continue
        if all(v is False for v in pre):
            raise _fail(path, f"space.{name}", "applies to pretrained models only (with pretrained: false every "
                                               f"layer trains from the start); set pretrained or drop {name}")
        if k[name].kind != "const" and False in pre and "pretrained" not in k[name].when:
            raise _fail(path, f"space.{name}", "is searched but applies only when pretrained: add "
                                               "when: {pretrained: true}")


def check_classes(path: str | Path, spec: SpaceFile, classes: list[str]) -> None:
    """`class_multipliers` must name classes the data has; known only once the data is scanned."""
    from trainables.trial.imbalance import unknown_multiplier_class

    knob = spec.knobs.get("class_multipliers")
    for value in knob.values() if knob else []:
        problem = unknown_multiplier_class(TrialParams.model_validate({"class_multipliers": value}).class_multipliers,
                                           classes)
        if problem:
            raise _fail(Path(path), "space.class_multipliers", problem)


def describe(spec: SpaceFile) -> str:
    """The resolved space as YAML, for --dry-run and the results folder."""
    body = spec.model_dump(exclude={"knobs"}, mode="json")
    return yaml.safe_dump(body, sort_keys=False)


def check_pretrained_weights(path: str | Path, spec: SpaceFile) -> None:
    """Every timm model the space can train with `pretrained: true` can get its weights here.

    Called by the search before Ray starts (not by `load`, which also rereads a results folder's space.yaml)."""
    from trainables.models.registry import OWN_MODELS, missing_pretrained_weights

    k = spec.knobs
    if "pretrained" not in k or True not in k["pretrained"].values():
        return
    allowed = k["pretrained"].when.get("model")
    names = [m for m in (k["model"].values() if "model" in k else [])
             if m not in OWN_MODELS and (allowed is None or m in allowed)]
    for name in names:
        why = missing_pretrained_weights(name)
        if why:
            raise _fail(path, "space.model",
                        f"pretrained weights for {name!r} cannot be had: {why}; download them once "
                        f"while online, give pretrained: /path/to/weights.pth, or pretrained: false")
