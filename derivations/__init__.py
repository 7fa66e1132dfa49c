"""Symbolic derivation of every adjoint of a cell from its spec, and code generation from it."""

from .reverse import Derivation, derive

__all__ = ["Derivation", "derive"]
