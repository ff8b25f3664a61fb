"""GPU kernel packages as importable stand-ins, for SGLang code run on a CPU host.

SGLang imports ``sgl_kernel`` (a CUDA-only wheel) on the way to its argument parsing,
``ServerArgs`` and benchmark clients. On a host without a GPU the package cannot be
installed; :func:`install` makes every missing root importable as a module whose
attributes are kernels that raise if called. Nothing that runs here calls one.

Used by ``tests/sglang_check.py`` (resolving rendered server commands) and by the
interpreter that ``scripts/sglang-release-python`` writes (a release's own benchmark
client in the rehearsal), each loading this file by its path. Standard library only.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

ROOTS = ("sgl_kernel",)


class KernelStandIn:
    """A GPU kernel of a package that cannot be installed on a CPU host: importable,
    raises if called."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} is a stand-in for a GPU kernel (CPU host)")

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return KernelStandIn(f"{self._name}.{name}")


class _StandInModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return KernelStandIn(f"{self.__name__}.{name}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: list[str]) -> None:
        self.roots = roots

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandInModule(spec.name)
        module.__path__ = []
        module.__version__ = "0.0.0"
        return module

    def exec_module(self, module):
        pass


def install(roots=ROOTS) -> list[str]:
    """Make each of ``roots`` that is not installed importable as a stand-in (last on
    ``sys.meta_path``, so an installed package always wins); return those stood in."""
    missing = [r for r in roots if importlib.util.find_spec(r) is None]
    if missing and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder(missing))
    return missing
