"""What an adapter whose framework is slow to import needs to load without importing it: conform's main
process only reads the adapter's cells, cases and versions; the framework is imported when the first case
runs (in the worker process), once."""

from __future__ import annotations

import importlib.metadata
import importlib.util


def require(*modules: str) -> None:
    """ImportError when one of ``modules`` is not installed (load_adapter then reports the install command)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"No module named {module!r}")


def version(module: str) -> str:
    """The installed version of a module, without importing it (tensorflow may come as tensorflow-cpu)."""
    for dist in importlib.metadata.packages_distributions().get(module, [module]):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"
