"""The one override parser: text from the command line becomes typed config values everywhere."""

from dataclasses import dataclass

import pytest

from hybridrl.core.config import RunConfig, field_docs, parse_assignments, with_overrides


@dataclass(frozen=True, kw_only=True)
class Example:
    flag: bool = True
    """A switch."""
    widths: tuple[int, ...] = (4, 4)
    rate: float | None = None
    """Optional rate."""


def test_text_values_are_converted_to_the_field_types():
    config = with_overrides(Example(), ["flag=false", "widths=8,8,8", "rate=none"])
    assert config == Example(flag=False, widths=(8, 8, 8), rate=None)
    assert with_overrides(Example(), {"rate": "0.5"}).rate == 0.5
    with pytest.raises(ValueError, match="flag must be true or false"):
        with_overrides(Example(), ["flag=maybe"])
    with pytest.raises(ValueError, match=r"unknown Example field\(s\) \['nope'\]"):
        with_overrides(Example(), ["nope=1"])


def test_assignments_are_split_once_with_one_line_errors():
    assert parse_assignments(["a-b=1", " c = x=y "]) == {"a_b": "1", "c": "x=y"}
    with pytest.raises(ValueError, match="--param takes KEY=VALUE"):
        parse_assignments(["novalue"], "--param")


def test_selfplay_method_settings_go_through_the_same_parser():
    from hybridrl.preference.selfplay_spec import SelfPlaySpec, method_config

    spec = SelfPlaySpec(name="example", summary="", config=Example, loss="sigmoid", build_targets=None)
    assert method_config(spec, {"flag": "false"}).flag is False  # bool("false") would be True


def test_field_docs_read_the_docstring_under_each_field():
    assert field_docs(Example) == {"flag": "A switch.", "widths": "", "rate": "Optional rate."}
    assert all(field_docs(RunConfig).values())


@pytest.mark.parametrize("field, value", [("steps", 0), ("eval_episodes", 0), ("log_every", 0),
                                          ("checkpoint_every", 0), ("eval_every", -1), ("threads", 0),
                                          ("offline_fraction", 1.5), ("updates_per_step", 0)])
def test_run_settings_refuse_values_that_cannot_run(field, value):
    with pytest.raises(ValueError, match=field.replace("_", "-")):
        RunConfig(**{field: value})
