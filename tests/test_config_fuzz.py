"""Property: any YAML document and any --set overrides are either accepted as a valid SweepConfig or rejected with
a ConfigError of one-line problems — never a traceback from inside the loader."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reslab.sweep.config import ConfigError, DataConfig, ExecConfig, GridConfig, TuneConfig, load_config
from reslab.sweep.grid import expand
from reslab.train.config import TrackingConfig, TrainConfig

SECTIONS = {"dataset": DataConfig, "grid": GridConfig, "train": TrainConfig, "tracking": TrackingConfig,
            "sweep": ExecConfig, "tune": TuneConfig}  # fmt: skip

scalars = (
    st.none() | st.booleans() | st.integers(-3, 1300) | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["A", "B", "plain", "residual", "rezero", "mnist1d", "synthetic", "auto", "cosine", "x"])
    | st.text(max_size=10)
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def section(model) -> st.SearchStrategy:
    keys = st.sampled_from([*model.model_fields, "bogus"])
    return st.dictionaries(keys, values, max_size=5) | values


documents = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["s", "my sweep", "", "ok-1"]) | scalars,
        **{name: section(model) for name, model in SECTIONS.items()},
        "grid": st.fixed_dictionaries(
            {"depths": st.lists(st.integers(-2, 120), max_size=4) | values},
            optional={
                "family": st.sampled_from(["resnet", "mlp", "convnet", "vgg"]),
                "blocks": st.lists(st.sampled_from(["plain", "residual", "preact", "rezero", "x"]), max_size=3),
                "widths": st.lists(st.integers(-1, 32), max_size=3),
            },
        )
        | section(GridConfig),
        "extra": values,
    },
)
overrides = st.lists(
    st.from_regex(
        r"(name|grid\.depths|grid\.widths|train\.epochs|train\.lr|sweep\.workers|dataset\.name|"
        r"tune\.trials_per_cell|[a-z.]{0,8})(=[\[\]0-9a-z,.:\- ]{0,10})?",
        fullmatch=True,
    ),
    max_size=3,
)


def check(source, sets: list[str]) -> None:
    try:
        config = load_config(source, sets)
    except ConfigError as exc:
        assert exc.problems
        assert all(p and "\n" not in p for p in exc.problems), exc.problems
        # one line for one problem; a header and one line per problem for several
        assert str(exc).count("\n") == (0 if len(exc.problems) == 1 else len(exc.problems))
    else:
        assert expand(config.grid)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, overrides)
def test_documents_and_overrides_are_accepted_or_refused_cleanly(doc: dict, sets: list[str]) -> None:
    check(doc, sets)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(documents.map(lambda d: yaml.safe_dump(d, allow_unicode=True)), st.text(max_size=80)), overrides)
def test_yaml_text_files_are_accepted_or_refused_cleanly(tmp_path: Path, text: str, sets: list[str]) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    check(path, sets)
