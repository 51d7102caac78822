"""Latest policy variables with their version: the learner publishes, actors pull."""

from __future__ import annotations


class VariableSource:
    def __init__(self):
        self._version = -1
        self._variables = None

    def publish(self, variables, version: int) -> None:
        if version > self._version:
            self._variables, self._version = variables, int(version)

    def version(self) -> int:
        return self._version

    def get(self, newer_than: int = -1):
        """(version, variables) if newer than `newer_than`, else None (cheap to poll)."""
        if self._version > newer_than:
            return self._version, self._variables
        return None
