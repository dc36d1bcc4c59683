"""Sweep configs: YAML in, a frozen validated `SweepConfig` out, or every problem at once.

A sweep is He et al.'s experiment generalised: a grid of (block x depth x width x shortcut x norm x seed) cells,
one dataset, one recipe. pydantic checks types and unknown keys; the checks pydantic cannot know (a depth that is
not 6n+2 for the family, a storage URL that is not one) run here too, and all problems are reported together with
their YAML path and what is valid, before anything is created or trained.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from reslab.models.catalog import FAMILY_INFO as FAMILIES
from reslab.models.remedies import NO_REMEDY, REMEDY_CHOICES
from reslab.models.rules import SpecError
from reslab.paths import PathError, read_text
from reslab.redact import STORAGE_ENV, TRACKING_ENV, redact, redact_uri
from reslab.train.config import DataConfig, TrackingConfig, TrainConfig

if TYPE_CHECKING:
    from reslab.sweep.grid import Cell

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")


class ConfigError(ValueError):
    """A config that cannot run: `problems` are 'yaml.path: what is wrong (what is valid)' lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = [redact(" ".join(str(p).split())) for p in problems]  # one line each, never a password
        problems = self.problems
        if len(problems) == 1:  # one problem, one line
            super().__init__(f"{source}: {problems[0]}; nothing was run")
            return
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problems; nothing was run:\n{lines}")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _GridBase(_Frozen):
    """The cells: every combination of the lists (a plain block has no shortcut, so plain cells take the first
    shortcut only). Each `NetSpec` field is a list under its plural key (`blocks`, `depths`, `inits`, ...; see
    `reslab.models.spec`); one left out is the family's default, the one `reslab train` and `NetSpec` use, so a grid
    cell and the same net trained alone are one network. The family is one per sweep (families have different depth
    rules); the convnet's `stages` and the transformer's `heads` and `context` are set, not swept."""

    family: str = "resnet"

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: Any) -> Any:
        family = data.get("family", "resnet") if isinstance(data, dict) else None
        if isinstance(family, str) and family in FAMILIES:  # a bad family is the family validator's to report
            from reslab.models.spec import NetSpec, axis_fields

            # Each block's default: one value on most families, one norm per block on the transformer's.
            nets = [NetSpec(family, block) for block in FAMILIES[family].choices["block"]]
            defaults = {f.metadata["plural"]: list(dict.fromkeys(getattr(net, f.name) for net in nets))
                        for f in axis_fields() if f.name not in ("block", "depth", "remedy", "base_depth")}  # fmt: skip
            data = {**defaults, **data}
        return data

    @field_validator("family")
    @classmethod
    def _family(cls, v: str) -> str:
        if v not in FAMILIES:
            raise ValueError(f"unknown family {v!r}; valid: {', '.join(FAMILIES)}")
        return v

    @field_validator("stages", mode="before", check_fields=False)
    @classmethod
    def _stages(cls, v: Any) -> Any:
        if isinstance(v, str):
            from reslab.models.spec import parse_stages

            try:
                return parse_stages(v)
            except SpecError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("widths", "seeds", check_fields=False)
    @classmethod
    def _non_negative(cls, v: list[int], info) -> list[int]:
        low = 1 if info.field_name == "widths" else 0
        bad = [x for x in v if x < low]
        if bad:
            raise ValueError(f"{info.field_name} must be integers >= {low}, got {bad}")
        return v

    @field_validator("depths", check_fields=False)
    @classmethod
    def _depths(cls, v: list[int], info) -> list[int]:
        from reslab.models.spec import NetSpec

        family = info.data.get("family")
        if family not in FAMILIES or family == "convnet":
            return v  # the family's own error says it; the convnet's depth rule depends on its stages (checked later)
        problems = []
        # The mlp's depth rule depends on its layers per branch (swept later in the grid): a depth valid for one
        # of them passes here, and every cell is built and checked once the grid is whole.
        others = [{"branch_layers": 1}] if family == "mlp" else []
        for i, depth in enumerate(v):
            errors = []
            for extra in [{}, *others]:
                try:
                    NetSpec(family, "plain", depth, **extra)
                    break
                except SpecError as exc:
                    errors.append(exc)
            else:
                problems.append(f"[{i}] {errors[0]}")
        if problems:
            raise ValueError("; ".join(problems))
        if len(set(v)) != len(v):
            raise ValueError(f"depths repeat: {v}")
        return v

    @field_validator("lr", check_fields=False)
    @classmethod
    def _lr(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            bad = [x for x in v if not x > 0]
            if bad:
                raise ValueError(f"learning rates must be positive, got {bad}")
            if len(set(v)) != len(v):
                raise ValueError(f"learning rates repeat: {v}")
        return v

    @model_validator(mode="after")
    def _every_cell_builds(self) -> _GridBase:
        """Every combination must be a net the family can build (Fixup has no batch norm, TAT no shortcut, no remedy
        is defined on the convnet): said here, before any cell is queued."""
        from reslab.sweep.grid import expand

        try:
            expand(self)
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        return self


def _grid_fields() -> dict[str, Any]:
    """The grid's keys: one list per swept `NetSpec` field under its plural key, then the fields that are set
    once for the whole grid (the convnet's stages, the transformer's heads and context), the seeds and the
    learning-rate axis."""
    from reslab.models.spec import spec_fields

    out: dict[str, Any] = {}
    for f in spec_fields():
        plural, choices = f.metadata["plural"], f.metadata["choices"]
        if f.name == "stages":
            out["stages"] = (tuple[tuple[int, bool], ...] | None, Field(None, description=f.metadata["help"]))
        elif f.name == "remedy":
            out[plural] = (list[Literal[REMEDY_CHOICES]], Field(
                default_factory=lambda: [NO_REMEDY], min_length=1,
                description="remedies for depth (reslab.models.remedies); `none` = the grid's own fields as they are",
            ))  # fmt: skip
        elif f.name == "block":  # He et al.'s comparison unless a grid says otherwise
            out[plural] = (list[Literal[choices]], Field(
                default_factory=lambda: ["plain", "residual"], min_length=1, description=f.metadata["help"]))
        elif f.name == "base_depth":  # unset: each net's own smallest depth (it depends on its layers per branch)
            out[plural] = (list[int | None], Field(default_factory=lambda: [None], min_length=1,
                                                   description=f.metadata["help"]))  # fmt: skip
        elif plural:
            # A field of some families only (the mlp's branch_layers) is unset, None, on the others.
            owned = any(f.name in info.own_fields for info in FAMILIES.values())
            item = Literal[choices] if choices else int | None if owned else int
            out[plural] = (list[item], Field(min_length=1, description=f.metadata["help"]))
        elif f.name != "family":  # a number set, not swept; unset: the family's default
            out[f.name] = (int | None, Field(None, description=f.metadata["help"]))
    out["seeds"] = (list[int], Field(default_factory=lambda: [0], min_length=1))
    out["lr"] = (list[float] | None, Field(
        None, min_length=1, description="a learning-rate axis: each cell once per value (instead of train.lr)"))
    return out


GridConfig = create_model("GridConfig", __base__=_GridBase, __doc__=_GridBase.__doc__, **_grid_fields())


class SlurmConfig(_Frozen):
    """What `--launcher slurm` asks SLURM for, per agent: each agent is one task of an array job, and starts its
    workers inside what it was given (`reslab.devices`: its CPUs, memory and GPUs, not the node's)."""

    agents: int = Field(2, ge=1, description="array tasks, one agent each (--agents)")
    partition: str | None = Field(None, description="#SBATCH --partition")
    account: str | None = Field(None, description="#SBATCH --account")
    time: str | None = Field(None, description="#SBATCH --time per agent, e.g. 4:00:00 (SIGTERM at the limit: "
                             "its cell goes back to the queue)")  # fmt: skip
    cpus_per_agent: int = Field(2, ge=1, description="#SBATCH --cpus-per-task")
    mem: str | None = Field(None, pattern=r"^[0-9]+[KMGT]?$", description="#SBATCH --mem per agent, e.g. 8G")
    gpus_per_agent: int = Field(0, ge=0, description="#SBATCH --gpus-per-task")
    sbatch: list[str] = Field(default_factory=list, description="more sbatch options, e.g. --qos=high")
    setup: list[str] = Field(default_factory=list, description="shell lines before the agent starts, e.g. "
                             "`module load cuda` or `source ~/venv/bin/activate`")  # fmt: skip
    python: str | None = Field(None, description="the Python that runs the agent on the nodes (default: the one "
                               "that submits, which a shared file system makes the same)")  # fmt: skip

    @field_validator("sbatch")
    @classmethod
    def _options(cls, v: list[str]) -> list[str]:
        for line in v:
            if not line.startswith("-") or "\n" in line:
                raise ValueError(f"sbatch option {line!r} is not one option: write it as on sbatch's command line, "
                                 f"e.g. --qos=high")  # fmt: skip
        return v


class ExecConfig(_Frozen):
    """Where the queue lives and who works on it."""

    storage: str | None = Field(
        None, description="Optuna storage: None = journal file runs/<name>/optuna.journal; or a journal path, "
        "sqlite:///x.db, postgresql://user:pass@host/db"
    )  # fmt: skip
    workers: int | Literal["auto"] = "auto"
    launcher: Literal["local", "slurm"] = Field(
        "local", description="who starts the agents: this machine (local), or SLURM as an array job (slurm)"
    )
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    runs_dir: str = "runs"
    heartbeat_s: float = Field(
        5.0, ge=1, description="a worker's lease is renewed this often (each beat is a write to the queue's storage)"
    )
    grace_s: float = Field(
        60.0, gt=0, description="a RUNNING cell whose lease is older than this is retried (>= 3 x heartbeat_s)"
    )
    storage_retry_s: float = Field(
        120.0, ge=0, description="transient queue-storage errors (a database restart, a locked file) are retried "
        "this long before the sweep stops with one line"
    )  # fmt: skip

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"workers must be >= 1 or 'auto', got {v}")
        return v

    @model_validator(mode="after")
    def _grace_spans_beats(self) -> ExecConfig:
        """A lease must survive a missed beat or two (a slow write, a GC pause), or live workers lose their cells."""
        if self.grace_s < 3 * self.heartbeat_s:
            raise ValueError(
                f"grace_s {self.grace_s:g} is less than 3 x heartbeat_s ({3 * self.heartbeat_s:g}): a worker that "
                f"misses one beat would lose its cell; set grace_s >= {3 * self.heartbeat_s:g} or lower heartbeat_s"
            )
        return self

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        if v is None:
            return v
        valid = "a journal file path (e.g. runs/x/optuna.journal), sqlite:///file.db or postgresql://user@host/db"
        if "://" in v:
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError

            try:
                url = make_url(v)
            except ArgumentError:
                raise ValueError(f"{redact_uri(v)!r} is not a storage URL; valid: {valid}") from None
            if url.get_backend_name() not in RDB_SCHEMES:
                raise ValueError(f"storage scheme {url.drivername!r} is not supported; valid: {valid}")
            return v
        if not v.strip() or v.endswith(("/", ".db", ".sqlite")):
            raise ValueError(f"{v!r} is not a storage; valid: {valid}")
        return v


class TuneConfig(_Frozen):
    """A budget-matched comparison: every cell gets the same number of TPE trials over lr and weight decay
    (log-uniform ranges), a median pruner on the per-epoch metric, and the best trial stands for the cell. The
    random start-up trials are paired: slot k draws the same candidates in every cell of a seed, so plain and
    residual nets are first compared at identical settings."""

    trials_per_cell: int = Field(8, ge=2)
    lr: tuple[float, float] = (0.01, 0.5)
    weight_decay: tuple[float, float] | None = (1e-5, 1e-3)
    metric: Literal["val_error", "test_error", "train_error"] = "val_error"
    pruner: Literal["median", "none"] = "median"
    pruner_startup_trials: int = Field(3, ge=0)
    pruner_warmup_epochs: int = Field(2, ge=0)

    @field_validator("lr", "weight_decay")
    @classmethod
    def _range(cls, v: tuple[float, float] | None, info) -> tuple[float, float] | None:
        if v is not None and not (0 < v[0] < v[1]):
            raise ValueError(f"{info.field_name} must be [low, high] with 0 < low < high, got {list(v)}")
        return v


class ArmConfig(_Frozen):
    """More cells than the grid's product: the grid with some of its keys replaced (`grid`), each cell trained with
    some recipe settings changed (`train`, none by default). A warm-up arm for the post-norm nets only, say, instead
    of warm-up for every net: `{grid: {blocks: [residual]}, train: {warmup_epochs: 1}}`; a second init for two of the
    blocks only: `{grid: {blocks: [residual, preact], inits: [gpt2]}}`. An arm's settings are part of its cells'
    keys and run names (`-warmup_epochs1`), so they never mix with the grid's own cells; an arm without settings
    adds grid cells (a cell the grid has already is run once)."""

    grid: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)


class SweepConfig(_Frozen):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    dataset: DataConfig = Field(default_factory=DataConfig)
    grid: GridConfig
    arms: list[ArmConfig] = Field(default_factory=list)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    sweep: ExecConfig = Field(default_factory=ExecConfig)
    tune: TuneConfig | None = None

    @model_validator(mode="after")
    def _arms_build(self) -> SweepConfig:
        """Each arm's grid is a grid and its settings a recipe, said as `arms[i]...` before any cell is queued."""
        for i, arm in enumerate(self.arms):
            for name in arm.train:
                if name == "seed":
                    raise ValueError(f"arms[{i}].train.seed: the grid's seeds choose it; set arms[{i}].grid.seeds")
                if name == "lr" and self.grid.lr is not None:
                    raise ValueError(f"arms[{i}].train.lr: grid.lr sweeps the learning rate; set arms[{i}].grid.lr")
                if name not in TrainConfig.model_fields:
                    raise ValueError(f"arms[{i}].train.{name}: not a training setting; valid: "
                                     f"{', '.join(TrainConfig.model_fields)}")  # fmt: skip
            try:
                self.arm_grid(arm)
                TrainConfig.model_validate({**self.train.model_dump(), **arm.train})
            except ValidationError as exc:
                lines = [line for err in exc.errors() for line in _describe(err)]
                raise ValueError("; ".join(f"arms[{i}].{line}" for line in lines)) from None
        return self

    def arm_grid(self, arm: ArmConfig) -> GridConfig:
        """The grid of `arm`: the sweep's, with the keys the arm sets replaced (its family stays the sweep's)."""
        if "family" in arm.grid:
            raise ValueError("an arm's grid keeps the sweep's family: remove family from it")
        return GridConfig.model_validate({**self.grid.model_dump(), **arm.grid})

    def cells(self) -> list[Cell]:
        """Every cell of the sweep once: the grid's, then each arm's."""
        from reslab.sweep.grid import sweep_cells

        return sweep_cells(self.grid, [(self.arm_grid(arm), arm.train) for arm in self.arms])

    @model_validator(mode="after")
    def _family_reads_dataset(self) -> SweepConfig:
        from reslab.data.catalog import pairing_problem

        problem = pairing_problem(self.grid.family, self.dataset.name)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _parametrization_takes_the_optimizer(self) -> SweepConfig:
        from reslab.train.config import optimizer_problem

        for grid, train in [(self.grid, {}), *[(self.arm_grid(arm), arm.train) for arm in self.arms]]:
            optimizer = train.get("optimizer", self.train.optimizer)
            for parametrization in grid.parametrizations:
                problem = optimizer_problem(parametrization, optimizer)
                if problem:
                    raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _tune_on_one_device(self) -> SweepConfig:
        devices = self.train.devices
        if self.tune is not None and devices not in (1, "1", "auto"):
            raise ValueError(f"tune works with one device per run; train.devices is {devices!r}: set it to 1")
        return self

    @model_validator(mode="after")
    def _one_source_of_lr(self) -> SweepConfig:
        if self.tune is not None and self.grid.lr is not None:
            raise ValueError(
                "grid.lr and tune both choose the learning rate: remove grid.lr to tune it, or the tune section to "
                "sweep it"
            )
        return self

    @model_validator(mode="after")
    def _val_metric_needs_val(self) -> SweepConfig:
        if self.tune is not None and self.tune.metric == "val_error":
            from reslab.data.catalog import DATASET_INFO

            options = {**DATASET_INFO[self.dataset.name].options(), **self.dataset.options}
            if not options.get("val_size"):
                raise ValueError(
                    f"tune.metric val_error needs a validation split: set dataset.options.val_size "
                    f"(dataset {self.dataset.name!r}) or tune.metric test_error"
                )
        return self

    @property
    def storage_url(self) -> str:
        """The Optuna storage: the configured one, else $RESLAB_STORAGE (which keeps a password off the command
        line), else the journal file under runs/<name>/."""
        configured = self.sweep.storage or os.environ.get(STORAGE_ENV)
        return configured or str(Path(self.sweep.runs_dir) / self.name / "optuna.journal")

    @property
    def run_dir(self) -> Path:
        return Path(self.sweep.runs_dir) / self.name

    def resolved(self) -> dict[str, Any]:
        """The config as it runs, for artifacts and the resolved YAML the workers read: URIs without their
        passwords (workers take the real ones from their environment, see `from_environment`)."""
        data = self.model_dump(mode="json")
        data["sweep"]["storage"] = redact_uri(data["sweep"]["storage"])
        data["tracking"]["uri"] = redact_uri(data["tracking"]["uri"])
        return data

    def from_environment(self) -> SweepConfig:
        """This config with the queue storage and tracking URI its coordinator passed through the environment
        ($RESLAB_STORAGE, $MLFLOW_TRACKING_URI): the resolved YAML that workers and cell processes read holds them
        without their passwords."""
        storage, uri = os.environ.get(STORAGE_ENV), os.environ.get(TRACKING_ENV)
        sweep = self.sweep.model_copy(update={"storage": storage}) if storage else self.sweep
        track = self.tracking.model_copy(update={"uri": uri}) if uri else self.tracking
        return self.model_copy(update={"sweep": sweep, "tracking": track})

    def recipe(self) -> dict[str, Any]:
        """What must not change between reruns of one sweep (the grid may grow)."""
        return {k: v for k, v in self.resolved().items() if k in ("dataset", "train", "tune")}


# -- loading -----------------------------------------------------------------------------------------------------------


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """`train.epochs=5` or `grid.depths=[8,20]`: the value is YAML; intermediate sections are created."""
    if "=" not in assignment:
        raise ValueError(f"--set {assignment!r}: expected KEY.PATH=VALUE, e.g. train.epochs=5")
    path, text = assignment.split("=", 1)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"--set {assignment!r}: value is not YAML ({exc.problem})") from None
    set_path(raw, path, value, f"--set {assignment!r}")


def set_path(raw: dict[str, Any], path: str, value: Any, what: str) -> None:
    """raw[a][b][c] = value for path 'a.b.c', creating missing sections; `what` names the assignment in errors."""
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise ValueError(f"{what}: empty key")
    node = raw
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ValueError(f"{what}: {'.'.join(keys[: i + 1])} is not a section")
        node = child
    node[keys[-1]] = value


#: The most cells one sweep may hold. He et al.'s CIFAR study is a few dozen cells and a broad depth-scaling sweep a
#: few hundred; a grid past this is a slip (a range pasted as the seeds), and expanding it cell by cell would cost
#: minutes of checks before the first message.
MAX_CELLS = 10_000


def grid_size_problem(grid: Any) -> str | None:
    """A line when the grid's lists multiply to more than MAX_CELLS cells, else None: judged from the lengths of
    the lists alone (every list-valued GridConfig field, given or defaulted), before any value is validated or any
    cell made. The product bounds the cell count from above (plain blocks take one shortcut)."""
    if isinstance(grid, GridConfig):
        grid = dict(grid)
    if not isinstance(grid, dict):
        return None  # not a mapping: validation says so
    lengths = {}
    for name, field in GridConfig.model_fields.items():
        if name == "stages":  # set once for the grid, not an axis
            continue
        value = grid[name] if name in grid else field.get_default(call_default_factory=True)
        if isinstance(value, (list, tuple)) and value:
            lengths[name] = len(value)
    cells = math.prod(lengths.values())
    if cells <= MAX_CELLS:
        return None
    longest = sorted(lengths.items(), key=lambda kv: -kv[1])
    factors = " x ".join(f"{n} {name}" for name, n in longest if n > 1)
    return (
        f"grid: its lists make {cells:,} cells ({factors}), more than the {MAX_CELLS:,} one sweep may hold: "
        f"shorten grid.{longest[0][0]}, or split the grid into several sweeps"
    )


def load_config(
    source: str | Path | dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    assign: dict[str, Any] | None = None,
) -> SweepConfig:
    """Read, override and validate a sweep config; raise ConfigError with every problem. `overrides` are `--set`
    assignments (YAML values); `assign` maps key paths to values taken as they are (a URI is not YAML: a password
    with ': ' or ' #' in it would parse as a mapping or a comment)."""
    label = str(source) if not isinstance(source, dict) else "<config>"
    if isinstance(source, dict):
        raw: Any = copy.deepcopy(source)
    else:
        path = Path(source)
        if not os.path.exists(path):
            raise ConfigError(label, [f"no such config file; the shipped ones are in configs/ ({_shipped()})"])
        try:
            raw = yaml.safe_load(read_text(path))
        except PathError as exc:
            hint = "; name the YAML file, e.g. configs/default.yaml" if path.is_dir() else ""
            raise ConfigError(label, [f"{exc}{hint}"]) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(label, [f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(label, [f"the top level must be a mapping of sections, got {type(raw).__name__}"])
    problems = []
    for assignment in overrides:
        try:
            apply_override(raw, assignment)
        except ValueError as exc:
            problems.append(redact(str(exc)))
    for path, value in (assign or {}).items():
        try:
            set_path(raw, path, value, path)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(label, problems)
    too_big = grid_size_problem(raw.get("grid"))
    if too_big:
        raise ConfigError(label, [too_big])
    tracking = raw.get("tracking")
    if isinstance(tracking, dict) and "experiment" not in tracking and isinstance(raw.get("name"), str):
        tracking["experiment"] = raw["name"]
    elif tracking is None and isinstance(raw.get("name"), str):
        raw["tracking"] = {"experiment": raw["name"]}
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(label, [line for err in exc.errors() for line in _describe(err)]) from None


def _describe(err: dict[str, Any]) -> list[str]:
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    msg = err["msg"].removeprefix("Value error, ")
    if msg.startswith("[") and loc.endswith("depths"):  # one line per bad depth: "grid.depths[2]: ..."
        return [f"{loc}[{part.split('] ', 1)[0].lstrip('[')}]: {part.split('] ', 1)[1]}" for part in msg.split("; [")]
    if err["type"] == "extra_forbidden":
        msg = "unknown key" + _valid_keys(err["loc"])
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "string_pattern_mismatch":
        msg = f"{err['input']!r} must be letters, digits, '.', '_' or '-' (it names folders and MLflow tags)"
    elif err["type"] == "literal_error":
        msg = f"{err['input']!r} is not valid; {msg.lower()}"
    return [f"{loc or '<top>'}: {msg}"]


def _valid_keys(loc: tuple) -> str:
    models: dict[str, type[BaseModel]] = {
        "": SweepConfig, "dataset": DataConfig, "grid": GridConfig, "train": TrainConfig,
        "tracking": TrackingConfig, "sweep": ExecConfig, "tune": TuneConfig,
    }  # fmt: skip
    section = ".".join(str(p) for p in loc[:-1])
    model = models.get(section)
    return f" (valid: {', '.join(model.model_fields)})" if model else ""


def _shipped() -> str:
    root = Path(__file__).resolve().parents[2] / "configs"
    names = sorted(p.name for p in root.glob("*.yaml")) if root.is_dir() else []
    return ", ".join(names) or "none found"
