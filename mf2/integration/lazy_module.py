"""A package module whose public names import their defining module on first use (after transformers' `_LazyModule`).

`import mf2` has to stay cheap: the models need torch and `transformers.modeling_utils` (seconds on a small CPU),
the processor PIL and the landmark back-ends, the pipeline `transformers.pipelines`. A package `__init__` replaces
itself in `sys.modules` with a `LazyModule` built from a map `{submodule: [public names]}`; `from mf2 import MF2Model`
then imports `mf2.modeling_mf2` and nothing else. This is transformers' `_LazyModule` design, re-written in a few lines
because importing it would import transformers (0.7 s), which `mf2 --help` cannot afford.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any


class LazyModule(ModuleType):
    """A module whose attributes `import_structure` names are imported from their submodule when first read.

    Args:
        name: the package's name (`__name__`).
        module_file: the package's `__init__.py` (`__file__`).
        import_structure: `{submodule: [public names defined there]}`, submodules relative to the package.
        module_spec: the package's `__spec__` (keeps `importlib` and `pickle` happy).
        extra_objects: attributes available at once, without an import (`__version__`).
    """

    def __init__(
        self,
        name: str,
        module_file: str,
        import_structure: dict[str, list[str]],
        module_spec: ModuleSpec | None = None,
        extra_objects: dict[str, Any] | None = None,
    ):
        super().__init__(name)
        self._name_to_module = {value: module for module, values in import_structure.items() for value in values}
        self._import_structure = import_structure
        self._objects = dict(extra_objects or {})
        self.__all__ = [value for values in import_structure.values() for value in values]
        self.__file__ = module_file
        self.__spec__ = module_spec
        self.__path__ = [os.path.dirname(module_file)]

    def module_of(self, name: str) -> str:
        """The full name of the submodule that defines public name `name` (KeyError for an unknown name)."""
        return f"{self.__name__}.{self._name_to_module[name]}"

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.__all__))

    def __getattr__(self, name: str) -> Any:
        if name in self._objects:
            return self._objects[name]
        if name in self._name_to_module:
            value = getattr(importlib.import_module(self.module_of(name)), name)
        elif name in self._import_structure:
            value = importlib.import_module(f"{self.__name__}.{name}")
        elif f"{self.__name__}.{name}" in sys.modules:
            # A subpackage imported before this module replaced the package in `sys.modules` (the `integration` wing
            # that holds this class): the import system set it on the replaced module, not here.
            value = sys.modules[f"{self.__name__}.{name}"]
        else:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        setattr(self, name, value)  # later reads are plain attribute reads
        return value

    def __reduce__(self):
        return (importlib.import_module, (self.__name__,))


__all__ = ["LazyModule"]
