"""Call a component the same way whether it is a local object or a Ray actor handle."""

from __future__ import annotations

from typing import Any


def is_remote(obj: Any) -> bool:
    return type(obj).__name__ == "ActorHandle"


def call(obj: Any, method: str, *args, **kwargs) -> Any:
    """Blocking call: `obj.method(...)`, or `ray.get(obj.method.remote(...))` for an actor."""
    if is_remote(obj):
        import ray

        return ray.get(getattr(obj, method).remote(*args, **kwargs))
    return getattr(obj, method)(*args, **kwargs)


class Poll:
    """A non-blocking call: start it, then ask whether its result is there yet.

    Locally the call runs at once; on Ray it is an object ref checked with a zero timeout, so
    an actor keeps stepping its envs while newer weights are on their way.
    """

    def __init__(self, obj: Any, method: str, *args):
        self._obj, self._method, self._args = obj, method, args
        self._ref = None
        self._value = None
        self.start()

    def start(self):
        if is_remote(self._obj):
            self._ref = getattr(self._obj, self._method).remote(*self._args)
        else:
            self._value = getattr(self._obj, self._method)(*self._args)

    def ready(self) -> bool:
        if self._ref is None:
            return True
        import ray

        done, _ = ray.wait([self._ref], timeout=0)
        return bool(done)

    def result(self):
        if self._ref is not None:
            import ray

            self._value, self._ref = ray.get(self._ref), None
        return self._value
