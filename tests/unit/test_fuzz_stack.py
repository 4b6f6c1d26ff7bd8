"""Hostile stack files, generated: the loader gives clean validation errors, never a traceback,
and never accepts garbage in the fields that reach command lines."""
from __future__ import annotations

import copy

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from config import StackConfigError, parse_stack
from config.model import host_address

from .test_config import valid_stack

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=30), st.binary(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _paths(data, prefix=()):
    """Every path into the valid stack's tree (dict keys and list indexes)."""
    yield prefix
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _paths(v, (*prefix, i))


def _load(data, base_dir):
    try:
        return parse_stack(data, source="fuzz.yaml", base_dir=base_dir)
    except StackConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return None


@FUZZ
@given(data=VALUES)
def test_any_document_is_a_stack_or_a_clean_error(tmp_path, data):
    _load(data, tmp_path)


@FUZZ
@given(choice=st.data())
def test_one_field_replaced_by_anything_is_a_stack_or_a_clean_error(tmp_path, choice):
    good = valid_stack(tmp_path)
    paths = [p for p in _paths(good) if p]
    path = choice.draw(st.sampled_from(paths))
    data = copy.deepcopy(good)
    target = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = choice.draw(VALUES)
    stack = _load(data, tmp_path)
    if stack is not None:  # accepted: the fields that reach argv and SSH are still clean
        for node in stack.nodes:
            assert not node.address.startswith("-") and " " not in node.address


@FUZZ
@given(text=st.text(max_size=80))
def test_any_text_is_yaml_or_a_clean_error(tmp_path, text):
    from config import parse_stack_text

    try:
        parse_stack_text(text, source="fuzz.yaml", base_dir=tmp_path)
    except StackConfigError as exc:
        assert exc.problems


@given(value=st.text(max_size=40))
@example(value="0\n")  # found by this test: `$` matched before a final newline (now `\Z`)
@example(value="node1.example\n")
def test_an_accepted_address_never_looks_like_an_option_or_holds_a_separator(value):
    try:
        accepted = host_address(value)
    except ValueError:
        return
    assert not accepted.startswith("-")
    assert not any(c in accepted for c in " \t\n;$`'\"|&<>()")


def test_the_valid_stack_itself_loads(tmp_path):
    assert _load(yaml.safe_load(yaml.safe_dump(valid_stack(tmp_path))), tmp_path) is not None
