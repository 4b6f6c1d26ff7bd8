"""Load a stack file and turn every validation problem into one line naming the file and field."""
from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from config.model import Stack


class StackConfigError(ValueError):
    """A stack file is unusable; ``problems`` holds one ``field.path: message`` per problem."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"{self.path}: {p}" for p in problems))


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _problems(error: ValidationError) -> list[str]:
    problems = []
    for e in error.errors(include_url=False):
        # Discriminated unions add the tag ("folder", "s3") to the location; drop it.
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in _TAGS))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see config/examples/)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        if not loc:  # model-level checks already name their fields, one per line
            problems.extend(msg.splitlines())
        else:
            problems.append(f"{_field_path(loc)}: {msg}")
    return problems


_TAGS = {"systemd", "docker-compose", "command", "folder", "s3", "local", "sftp"}


def parse_stack(data: object, *, source: str = "<stack>", base_dir: Path | None = None,
                check_files: bool = True) -> Stack:
    if not isinstance(data, dict):
        raise StackConfigError(source, ["the file must hold a mapping (key: value) at the top"])
    try:
        return Stack.model_validate(
            data, context={"base_dir": base_dir, "check_files": check_files}
        )
    except ValidationError as exc:
        raise StackConfigError(source, _problems(exc)) from None


def load_stack(path: str | os.PathLike, *, check_files: bool = True) -> Stack:
    """Read and validate a stack file; relative file paths inside it are relative to it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StackConfigError(path, ["file not found"]) from None
    except OSError as exc:
        raise StackConfigError(path, [f"cannot read: {exc.strerror}"]) from None
    return parse_stack_text(text, source=str(path), base_dir=path.parent, check_files=check_files)


def parse_stack_text(text: str, *, source: str, base_dir: Path | None = None,
                     check_files: bool = True) -> Stack:
    """A stack file's text (from a file, or held by a Prefect Variable) validated."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise StackConfigError(source, [f"{where}not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    return parse_stack(data, source=source, base_dir=base_dir, check_files=check_files)
