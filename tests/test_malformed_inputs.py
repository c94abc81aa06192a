"""Random malformed inputs to the Minari loader and the preference-file reader: each one loads or is
refused with the project's own error (one line); none crashes with anything else."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _support import TINY_DATASET, make_episode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridrl.control.datasets import DatasetError, episodes_to_transitions
from hybridrl.preference.data import PreferenceDataError, read_json_rows

FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_FIELDS = ("observations", "actions", "rewards", "terminations", "truncations")


def _one_line(err: Exception) -> None:
    text = str(err)
    assert text and "\n" not in text.strip(), text


@st.composite
def episodes(draw):
    """Minari-style episodes with some fields dropped, reshaped, cut, poisoned or of the wrong type."""
    out = []
    for seed in range(draw(st.integers(0, 3))):
        episode = make_episode(draw(st.integers(1, 6)), obs_dim=draw(st.integers(1, 3)), act_dim=2, seed=seed)
        for name in _FIELDS:
            change = draw(st.sampled_from(["keep", "keep", "drop", "cut", "nan", "scalar", "text", "3d", "big"]))
            value = episode[name]
            if change == "drop":
                del episode[name]
            elif change == "cut":
                episode[name] = value[: draw(st.integers(0, len(value)))]
            elif change == "nan" and value.dtype.kind == "f":
                episode[name] = np.where(np.arange(value.size).reshape(value.shape) == 0, np.nan, value)
            elif change == "scalar":
                episode[name] = np.float64(1.0)
            elif change == "text":
                episode[name] = ["a"] * len(value)
            elif change == "3d":
                episode[name] = value.reshape(len(value), -1, 1)
            elif change == "big":
                episode[name] = value * 10.0
        out.append(episode)
    return out


@FAST
@given(episodes())
def test_episodes_load_or_give_one_line(batch):
    try:
        data = episodes_to_transitions(batch)
    except DatasetError as err:
        _one_line(err)
        return
    assert len(data) == sum(len(ep["rewards"]) for ep in batch)


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode)),
       which=st.sampled_from(["metadata", "hdf5"]))
def test_a_dataset_with_a_damaged_file_loads_or_gives_one_line(tmp_path_factory, minari_store, garbage, which):
    from hybridrl.control import datasets

    store = tmp_path_factory.mktemp("store")
    shutil.copytree(minari_store / TINY_DATASET, store / TINY_DATASET)
    target = store / TINY_DATASET / "data" / ("metadata.json" if which == "metadata" else "main_data.hdf5")
    target.write_bytes(garbage)
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", str(store))
    try:
        datasets.load(TINY_DATASET)
    except DatasetError as err:
        _one_line(err)
    finally:
        mp.undo()


_VALUES = st.one_of(st.text(max_size=8), st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
                    st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=4)}),
                             max_size=2))
_ROWS = st.fixed_dictionaries({}, optional={"prompt": _VALUES, "chosen": _VALUES, "rejected": _VALUES})


@st.composite
def preference_files(draw):
    """JSON Lines text made of rows, non-object values, torn lines, blank lines and raw bytes."""
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["row", "row", "value", "torn", "blank", "bytes"]))
        if kind == "row":
            lines.append(json.dumps(draw(_ROWS)).encode())
        elif kind == "value":
            lines.append(json.dumps(draw(_VALUES)).encode())
        elif kind == "torn":
            text = json.dumps(draw(_ROWS))
            lines.append(text[: draw(st.integers(0, max(len(text) - 1, 0)))].encode())
        elif kind == "blank":
            lines.append(b"   ")
        else:
            lines.append(draw(st.binary(max_size=12)).replace(b"\n", b"").replace(b"\r", b""))
    return b"\n".join(lines) + draw(st.sampled_from([b"", b"\n"]))


@FAST
@given(content=preference_files(), suffix=st.sampled_from([".jsonl", ".json"]))
def test_preference_files_load_or_give_one_line(tmp_path, content, suffix):
    path = tmp_path / f"pairs{suffix}"
    path.write_bytes(content)
    try:
        rows = read_json_rows(path)
    except PreferenceDataError as err:
        _one_line(err)
        assert str(path) in str(err)
        return
    assert rows and all(isinstance(row, dict) for row in rows)
