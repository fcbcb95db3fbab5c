"""The few error kinds callers branch on; the CLI maps them to exit codes."""

from __future__ import annotations


class NodeguardError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class PolicyError(NodeguardError):
    """Bad input: printed as ``FILE:LINE: field.path: message``; kernel untouched."""

    exit_code = 2

    def __init__(self, file: str, line: int | None, field: str, message: str):
        self.file, self.line, self.field, self.message = file, line, field, message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class EnvironmentProblem(NodeguardError):
    """Cannot run here (not root, no CAP_NET_ADMIN, libnftables missing); kernel untouched."""

    exit_code = 2


class BackendError(NodeguardError):
    """The kernel refused a transaction; ``kind`` says which step."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(f"{kind}: {message.strip()}")


class SetFull(BackendError):
    """The kernel refused an element: the set holds its size. Told by the backend that sent it (the
    only place that knows how its tool says so), so that callers never read the tool's words."""


class NotFound(BackendError):
    """The kernel has no such table, set or element. Told as SetFull is."""
