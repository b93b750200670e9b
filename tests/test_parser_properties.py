"""The schedule and head-map parsers on random bytes and random JSON: a clean ValueError or a
valid result, never another exception (hypothesis)."""

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headforcing.heads.headmap import FORMAT, HeadMap
from headforcing.schedule import FrameClock, PromptSchedule, load_schedule

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
keys = st.sampled_from(["prompt", "seconds", "frame", "prompts", "switch_frame_indices", "x"])
schedule_lines = st.dictionaries(keys, json_values | st.lists(st.text(max_size=8)), max_size=4)
head_map_like = st.fixed_dictionaries(
    {"format": st.just(FORMAT)},
    optional={
        "preset": json_values,
        "labels": json_values | st.lists(st.lists(st.sampled_from(["local", "anchor", "memory"]))),
        "num_layers": json_values,
        "num_heads": json_values,
        "stats": json_values,
    },
)


def parse_schedule(data: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "schedule.jsonl"
        path.write_bytes(data)
        try:
            schedule = load_schedule(path, FrameClock(), None)
        except ValueError:
            return
        assert isinstance(schedule, PromptSchedule) and schedule.segments[0].start == 0


def parse_head_map(data: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "map.json"
        path.write_bytes(data)
        try:
            head_map = HeadMap.load(path)
        except ValueError:
            return
        assert head_map.num_layers >= 1


@SETTINGS
@given(st.binary(max_size=300))
def test_schedule_on_random_bytes(data):
    parse_schedule(data)


@SETTINGS
@given(st.lists(schedule_lines | json_values, min_size=1, max_size=4))
def test_schedule_on_random_json_lines(lines):
    parse_schedule("\n".join(json.dumps(line) for line in lines).encode())


@SETTINGS
@given(st.binary(max_size=300))
def test_head_map_on_random_bytes(data):
    parse_head_map(data)


@SETTINGS
@given(head_map_like | json_values)
def test_head_map_on_random_json(data):
    parse_head_map(json.dumps(data).encode())
