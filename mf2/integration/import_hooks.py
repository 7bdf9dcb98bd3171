"""Run a callback once a module is imported, at a moment when running more imports is safe.

MF² registers its classes with transformers' Auto* factories and the pipeline registry. Those live in modules that
cost seconds to import (`transformers.modeling_utils`, `transformers.pipelines`), so `import mf2` does not import them;
it registers as soon as the user (or any library) imports them. That is a post-import hook, with one subtlety: a
module finishes loading while its importers are still half-initialised (`transformers.modeling_utils` may import
`modeling_auto` midway), and a registration that imports `mf2.modeling_mf2` then would fail on the half-made module.
So a callback runs only when no watched import (any `transformers` or `mf2` module) is in flight in this thread: at
the end of the outermost one.

`when_imported(triggers, callback)` is the whole interface; the finder removes itself once every callback has run.
It works in memory only (it wraps loaders, it never creates a module or a file), so `import mf2` writes nothing to disk.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.machinery import ModuleSpec

WATCHED_PACKAGES = ("transformers", "mf2")
"""Top-level packages whose imports are tracked (and whose modules can be triggers)."""


def _watched(name: str) -> bool:
    return any(name == package or name.startswith(package + ".") for package in WATCHED_PACKAGES)


def _loaded(name: str, finished: str | None = None) -> bool:
    """Whether module `name` is fully imported: in `sys.modules` and not still executing, or the module `finished`
    whose execution just ended (importlib clears its `_initializing` flag only after our wrapper returns)."""
    module = sys.modules.get(name)
    if module is None:
        return False
    return name == finished or not getattr(getattr(module, "__spec__", None), "_initializing", False)


class HookError(RuntimeError):
    """A post-import callback failed; raised from the import statement that triggered it."""

    def __init__(self, name: str, trigger: str, error: BaseException):
        self.name, self.trigger, self.error = name, trigger, error
        super().__init__(f"mf2: {name} failed after importing {trigger}: {type(error).__name__}: {error}")


@dataclass
class _Hook:
    name: str
    triggers: tuple[str, ...]
    callback: Callable[[], None]
    done: bool = False

    def ready(self, finished: str | None = None) -> str | None:
        """The first trigger already imported, or None."""
        return next((trigger for trigger in self.triggers if _loaded(trigger, finished)), None)


@dataclass
class _State(threading.local):
    depth: int = 0  # watched imports in flight in this thread
    running: bool = False  # a callback is running in this thread (its own imports must not re-enter)


_hooks: list[_Hook] = []
_thread = _State()
_lock = threading.RLock()


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it asks the other finders and wraps the loader of watched modules, to count the imports
    in flight and run ready callbacks when the outermost one ends."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target=None) -> ModuleSpec | None:
        if not _watched(fullname):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                loader = spec.loader
                if loader is not None and hasattr(loader, "exec_module") and not getattr(loader, "_mf2_wrapped", 0):
                    _wrap(loader)
                return spec
        return None


def _wrap(loader) -> None:
    """Count `loader`'s executions as watched imports (an attribute on this loader instance: one per module)."""
    execute = loader.exec_module

    def exec_module(module):
        _thread.depth += 1
        try:
            execute(module)
        finally:
            _thread.depth -= 1
        if _thread.depth == 0:
            _run_ready(module.__name__)

    try:
        loader.exec_module = exec_module
        loader._mf2_wrapped = 1
    except AttributeError:  # a loader without instance attributes: its module's import is simply not counted
        pass


_finder = _PostImportFinder()


def _run_ready(finished: str | None = None) -> None:
    """Run every callback whose trigger is imported, unless an import or a callback is in flight in this thread;
    `finished` is the module whose import just ended."""
    if _thread.running or _thread.depth:
        return
    _thread.running = True
    try:
        while True:
            with _lock:
                hook = next((hook for hook in _hooks if not hook.done and hook.ready(finished)), None)
                if hook is None:
                    if all(hook.done for hook in _hooks) and _finder in sys.meta_path:
                        sys.meta_path.remove(_finder)
                    return
                hook.done = True  # once, even if it fails: a failing registration is reported, not retried
            trigger = hook.ready(finished)
            try:
                hook.callback()
            except Exception as error:
                raise HookError(hook.name, trigger, error) from error
    finally:
        _thread.running = False


def when_imported(name: str, triggers: Iterable[str], callback: Callable[[], None]) -> None:
    """Call `callback()` once, as soon as any module of `triggers` (names inside `WATCHED_PACKAGES`) is imported and
    no watched import is in flight; at once if a trigger is imported already. `name` names it in errors."""
    triggers = tuple(triggers)
    unwatched = [trigger for trigger in triggers if not _watched(trigger)]
    if unwatched:
        raise ValueError(f"when_imported: {unwatched} are outside the watched packages {WATCHED_PACKAGES}.")
    with _lock:
        _hooks.append(_Hook(name, triggers, callback))
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
    _run_ready()


def pending() -> list[str]:
    """Names of the callbacks that have not run yet."""
    return [hook.name for hook in _hooks if not hook.done]


__all__ = ["WATCHED_PACKAGES", "HookError", "pending", "when_imported"]
