"""The step registry: a workflow's `type:` → the Step class that executes it.

Built-in types are always present; plugins add theirs through the entry point group
`eclflow.steps` (each entry point names a Step subclass) or by calling `register`. The default
registry looks for plugins only when asked for a type it does not have, or for all of them:
scanning the installed packages' entry points takes tens of milliseconds, and most workflows
use only built-in types (`eclflow validate` must start fast). A plugin cannot replace a
built-in type.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import ConfigError, StepNotFound
from .base import Step

ENTRY_POINT_GROUP = "eclflow.steps"
_BUILTIN = "eclflow.steps.builtin"


class StepRegistry:
    def __init__(self) -> None:
        self._types: dict[str, type[Step]] = {}
        self._plugins_pending = False  # entry points to load before a miss or a listing
        self.problems: list[str] = []  # plugins that failed to load

    def register(self, cls: type[Step], *, replace: bool = False) -> type[Step]:
        """Add a step type. `replace`: a type of the same name that is not built in gives way
        (a built-in type never does: a workflow's `generate` is always the same step)."""
        if not (isinstance(cls, type) and issubclass(cls, Step)):
            raise ConfigError(f"a step type is a subclass of eclflow.Step, not {cls!r}")
        name = cls.type_name
        if not name:
            raise ConfigError(f"step class {cls.__qualname__} has no type_name")
        current = self._types.get(name)
        if current is not None and current is not cls:
            from .builtin import BUILTINS

            if not replace or current in BUILTINS:
                raise ConfigError(f"Step type '{name}' is already registered")
        self._types[name] = cls
        return cls

    def get(self, name: str) -> type[Step]:
        cls = self._types.get(name) or self._all().get(name)
        if cls is None:
            raise StepNotFound(name)
        return cls

    def names(self) -> list[str]:
        return sorted(self._all())

    def __contains__(self, name: object) -> bool:
        return name in self._types or name in self._all()

    def __len__(self) -> int:
        return len(self._all())

    def __iter__(self) -> Iterator[type[Step]]:
        return iter(self._all().values())

    def _all(self) -> dict[str, type[Step]]:
        if self._plugins_pending:
            self._plugins_pending = False
            self.problems += self.load_entry_points()
        return self._types

    def load_entry_points(self) -> list[str]:
        """Import plugin step types; returns one line per plugin that failed to load."""
        from importlib.metadata import entry_points

        problems = []
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                current = self._types.get(ep.name)
                if current is not None and current.__module__ == _BUILTIN:
                    raise TypeError(f"'{ep.name}' is a built-in step type")
                cls = ep.load()
                if not (isinstance(cls, type) and issubclass(cls, Step)):
                    raise TypeError("not a subclass of eclflow.Step")
                if current is cls:
                    continue
                if current is not None:  # another plugin's, or one the program registered
                    where = f"{current.__module__}:{current.__qualname__}"
                    raise TypeError(f"'{ep.name}' is already the type of {where}")
                if not cls.type_name:
                    cls.type_name = ep.name
                # The entry point's name is the type (docs/format.md), whatever type_name the
                # class has or inherits: a subclass of GenerateStep registered as `my_generate`
                # inherits type_name "generate", and must neither replace the built-in type nor
                # go missing under its own name.
                self._types[ep.name] = cls
            except Exception as e:  # a broken plugin must not break eclflow
                why = " ".join(str(e).split()) or type(e).__name__
                problems.append(f"plugin step '{ep.name}' ({ep.value}) failed to load: {why}")
        return problems

    def problem(self, name: str) -> str | None:
        """Why the plugin that declares type `name` failed to load, if one did."""
        self._all()
        prefix = f"plugin step '{name}' "
        return next((p for p in self.problems if p.startswith(prefix)), None)


_default: StepRegistry | None = None


def default_registry() -> StepRegistry:
    """The process-wide registry: built-ins plus installed plugins, loaded on first use."""
    global _default
    if _default is None:
        from .builtin import BUILTINS

        reg = StepRegistry()
        for cls in BUILTINS:
            reg.register(cls)
        reg._plugins_pending = True
        _default = reg
    return _default


def register(cls: type[Step]) -> type[Step]:
    """Class decorator: add a step type to the default registry."""
    return default_registry().register(cls, replace=True)
