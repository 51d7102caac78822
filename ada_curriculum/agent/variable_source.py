"""Latest policy variables with their version: the learner publishes, actors pull.

Entries are named, as Acme's `VariableSource.get_variables(names)`: "acting" is what the actors
(and by default the evaluator) use; "student" is the newest weights the learner trains. They
are the same weights except during distillation, while the actors still act with the frozen
teacher. Each entry carries the policy its variables belong to and its generation, so a reader
can act with a model of another architecture than the one it was built with.
"""

from __future__ import annotations

ACTING, STUDENT = "acting", "student"


class VariableSource:
    def __init__(self):
        self._entries: dict[str, tuple] = {}  # name -> (version, variables, policy, generation)

    def publish(self, variables, version: int, policy=None, generation: int = 0, names=(ACTING,)) -> None:
        """Store `variables` under each of `names` unless that entry is newer. Order is by
        (generation, version): a new generation's first weights replace the last generation's
        even at the same update count."""
        for name in names:
            old = self._entries.get(name)
            if old is None or (int(generation), int(version)) > (old[3], old[0]):
                self._entries[name] = (int(version), variables, policy, int(generation))

    def version(self, name: str = ACTING) -> int:
        entry = self._entries.get(name)
        return -1 if entry is None else entry[0]

    def get(self, newer_than: int = -1, name: str = ACTING):
        """(version, variables) if newer than `newer_than`, else None (cheap to poll)."""
        got = self.get_with_policy(newer_than, name)
        return None if got is None else got[:2]

    def get_with_policy(self, newer_than: int = -1, name: str = ACTING):
        """(version, variables, policy, generation) if newer than `newer_than`, else None.
        `policy` is None when the publisher did not say (the reader's own policy applies)."""
        entry = self._entries.get(name)
        if entry is None or entry[0] <= newer_than:
            return None
        return entry
