"""Where a flow's stack comes from when it is given none: never a built-in default."""
from __future__ import annotations

import pytest
import yaml

from config import StackConfigError
from flows.common import STACK_ENV, STACK_VARIABLE, resolve_stack

from .test_config import valid_stack, write


def test_no_stack_named_anywhere_is_one_clear_error(monkeypatch):
    monkeypatch.delenv(STACK_ENV, raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # no Prefect API either, even in a process where a stack test's session server set one (and,
    # through it, the Variable): the unit files now run after the stack files
    with temporary_settings(restore_defaults={PREFECT_API_URL}), pytest.raises(StackConfigError) as err:
        resolve_stack("")
    assert str(err.value) == (f"stack: no stack file named: pass stack=<path>, set {STACK_ENV}=<path>, "
                              f"or set the Prefect Variable '{STACK_VARIABLE}' to a path or to the "
                              "stack file's text")


def test_the_environment_names_the_stack_and_a_parameter_overrides_it(tmp_path, monkeypatch):
    base = valid_stack(tmp_path)
    named = write(tmp_path, base)
    other = dict(base, name="other")
    (tmp_path / "other").mkdir()
    for f in ("id_ed25519", "known_hosts"):
        (tmp_path / "other" / f).write_text("")
    explicit = write(tmp_path / "other", other)
    monkeypatch.setenv(STACK_ENV, str(named))
    assert resolve_stack("").name == "t"
    assert resolve_stack(str(explicit)).name == "other"
    monkeypatch.setenv(STACK_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(StackConfigError, match="missing.yaml: file not found"):
        resolve_stack("")


def test_stack_text_problems_name_the_variable(tmp_path):
    base = valid_stack(tmp_path)
    from config import parse_stack_text

    base["ssh"]["port"] = "not a port"
    with pytest.raises(StackConfigError) as err:
        parse_stack_text(yaml.safe_dump(base), source=f"Prefect Variable {STACK_VARIABLE}",
                         base_dir=tmp_path)
    assert str(err.value).startswith(f"Prefect Variable {STACK_VARIABLE}: ssh.port: ")
