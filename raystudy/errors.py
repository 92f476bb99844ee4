"""User-facing errors. Every one carries enough context to fix the input."""

from __future__ import annotations

import difflib
from typing import Iterable


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
