"""The one error type users see: a single line, no traceback (unless --debug)."""

from __future__ import annotations


class SouteError(Exception):
    """An error caused by input or state the user can act on.

    ``str(err)`` is the whole one-line message, hint included.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class LocatedError(SouteError):
    """An error at a line of a file: ``FILE:LINE: message (hint)``."""

    def __init__(
        self, message: str, *, file: str = "Dockerfile", line: int = 0, hint: str | None = None
    ) -> None:
        self.file = file
        self.line = line
        super().__init__(message, hint)

    def _render(self) -> str:
        where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        return where + super()._render()

    def located(self, file: str) -> LocatedError:
        """The same error, naming ``file`` instead of the default."""
        self.file = file
        self.args = (self._render(),)
        return self
