"""User-facing errors. Every one carries enough context to fix the input."""

from __future__ import annotations

import difflib
import typing
from typing import Any, Iterable

from pydantic import BaseModel, ValidationError


class StudyError(Exception):
    """A problem with the user's input. The CLI prints it and exits with code 2."""

    def __init__(self, message: str, *, file: str | None = None, path: str | None = None,
                 expected: str | None = None, hint: str | None = None):
        self.file = file
        self.path = path
        self.expected = expected
        self.hint = hint
        self.raw = message
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.file:
            where += f"{self.file}: "
        if self.path:
            where += f"{self.path}: "
        text = where + self.raw
        if self.expected:
            text += f" (expected {self.expected})"
        if self.hint:
            text += f"; {self.hint}"
        return text

    def located(self, file: str | None = None, prefix: str | None = None) -> "StudyError":
        """Return a copy whose path is prefixed / whose file is set."""
        path = self.path
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        return StudyError(self.raw, file=file or self.file, path=path,
                          expected=self.expected, hint=self.hint)


class StudyErrors(StudyError):
    """Several problems found at once; shown together so the user fixes them in one go."""

    def __init__(self, errors: list[StudyError]):
        self.errors = errors
        Exception.__init__(self, "\n".join(e.render() for e in errors))

    def render(self) -> str:  # pragma: no cover - trivial
        return "\n".join(e.render() for e in self.errors)


def suggest(name: str, choices: Iterable[str]) -> str | None:
    """The closest valid name, for 'did you mean' hints."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.5)
    return close[0] if close else None


def unknown_name_error(kind: str, name: str, choices: Iterable[str], path: str | None = None) -> StudyError:
    choices = sorted(choices)
    best = suggest(name, choices)
    hint = f"did you mean '{best}'?" if best else None
    return StudyError(f"unknown {kind} '{name}'", path=path,
                      expected="one of: " + ", ".join(choices), hint=hint)


# ------------------------------------------------------------------ pydantic errors

def _unwrap(tp):
    """Find the pydantic model inside Optional[...] / list[...] / dict[str, ...]."""
    origin = typing.get_origin(tp)
    if origin is None:
        return tp
    for arg in typing.get_args(tp):
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return None


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    cur: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            return None
        f = cur.model_fields.get(part)
        if f is None:
            return None
        cur = _unwrap(f.annotation)
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _translate(err: dict, loc: tuple, model: type[BaseModel], line: str, file: str | None,
               path: str) -> StudyError:
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        valid = sorted(parent.model_fields) if parent else []
        best = suggest(str(loc[-1]), valid)
        return StudyError(f"{line}unknown key '{loc[-1]}'", file=file, path=path,
                          expected=("one of: " + ", ".join(valid)) if valid else None,
                          hint=f"did you mean '{best}'?" if best else "remove it")
    if kind == "missing":
        return StudyError(f"{line}required key is missing", file=file, path=path, hint="add it")
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    got_txt = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    if len(got_txt) > 60:
        got_txt = got_txt[:57] + "..."
    return StudyError(f"{line}{msg} (got {got_txt})", file=file, path=path, hint="fix the value")


def pydantic_errors(exc: ValidationError, model: type[BaseModel], *, file: str | None,
                    prefix: str | None = None, marks: dict | None = None) -> list[StudyError]:
    """A pydantic ValidationError of `model` as StudyErrors: dotted path (under `prefix`), the
    line from `marks` ({key path tuple: (line, column)}), and the closest valid key for a typo."""
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = ".".join(str(p) for p in loc)
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        m = marks.get(loc) if marks is not None else None
        out.append(_translate(err, loc, model, f"line {m[0]}: " if m else "", file, path))
    return out


def raise_all(errors: list[StudyError]) -> None:
    """Raise the one error, or all of them together; nothing when the list is empty."""
    if errors:
        err = errors[0] if len(errors) == 1 else StudyErrors(errors)
        # As `raise ... from None` inside an except block: the user's mistake, not a chain.
        err.__suppress_context__ = True
        raise err
