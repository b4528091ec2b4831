"""Named factories of one kind of pluggable part, read by the CLI, the evaluator and the web page.

Stage-2 re-rankers (`facerank.rerank.base`) and score calibrators (`facerank.calibrate.base`)
both plug in this way: a module registers a factory under a name with a decorator, and
`--stage2 NAME` / `--calibrate NAME` find it without being rewired. "none" is always a name
and builds nothing. The built-in modules are imported on first use (`builtin`), so importing
the registry stays cheap and free of import cycles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from facerank.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """{name: factory(**options) -> T}; `kind` names the part in error messages."""

    def __init__(self, kind: str, builtin: Callable[[], None]) -> None:
        self.kind = kind
        self._builtin = builtin
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: make a factory available under `name`."""

        def wrap(factory: Callable[..., T]) -> Callable[..., T]:
            self._factories[name] = factory
            return factory

        return wrap

    def names(self) -> list[str]:
        """Registered names, plus "none"."""
        self._builtin()
        return ["none", *sorted(self._factories)]

    def make(self, name: str, **options: object) -> T | None:
        """Build the part registered as `name` ("none" -> None); an unknown name or unknown
        options are an InputError naming the choices."""
        self._builtin()
        if name == "none":
            return None
        if name not in self._factories:
            raise InputError(f"unknown {self.kind} {name!r}; choose from "
                             f"{', '.join(self.names())}")
        try:
            return self._factories[name](**options)
        except TypeError as e:
            raise InputError(f"bad options for {self.kind} {name!r}: {e}") from None
