"""One namespace for every name of a generated module.

A generated module binds the spec's names (inputs, states, parameters, dimensions, defined quantities,
initial states ``s0``) and names the generator invents: auxiliaries the derivation hoists (``tanh_c``),
matrix products (``W_f_x``), adjoints (``d_c``, ``d_h_prev``, ``d_h_next``), temporaries (``_tmp0``),
stacked matrices and products (``S_x``, ``P_x``, ``d_S_x``) and adjoint buffers (``d_Z0``). It also reads
the runtime's names, its own locals and Python's builtins.

All of them live in one :class:`Namespace`: the reserved names and the spec's names are taken first,
then every invented name is *allocated*: its readable form when that is free, else the first free
``<form>2``, ``<form>3``, ... So the map from what a name stands for to the name is injective by
construction, whatever the spec calls its quantities and functions (a function ``d`` whose hoisted
``d(c)`` wanted the name of c's adjoint, ``A_q @ x`` beside ``A @ q_x``, a quantity called ``Z0`` beside a
buffer ``d_Z0``). The generator checks the module it writes against the namespace
(:func:`lstm_spec.derivations.codegen.check_module_names`).
"""

from __future__ import annotations

from lstm_spec.spec.cells import reserved_names
from lstm_spec.spec.language import SpecError


class Namespace:
    """Names and what each one stands for ("reserved", "the spec's ...", "the adjoint of ...")."""

    def __init__(self, where: str):
        self.where = where
        self.owner: dict[str, str] = {}

    def reserve(self, names, source: str) -> None:
        for name in sorted(names):
            self.owner.setdefault(name, source)

    def claim(self, name: str, source: str) -> str:
        """A name that must be exactly this (a spec's name, part of the module's interface)."""
        if name in self.owner and self.owner[name] != source:
            raise SpecError(f"{self.where}: the generated code would use the name {name!r} for {source} and for "
                            f"{self.owner[name]}; rename it")
        self.owner[name] = source
        return name

    def fresh(self, base: str, source: str) -> str:
        """``base`` if it is free, else the first free base2, base3, ... (allocated to ``source``)."""
        name, k = base, 2
        while name in self.owner:
            name, k = f"{base}{k}", k + 1
        self.owner[name] = source
        return name

    def taken(self, name: str) -> bool:
        return name in self.owner

    def names(self) -> set[str]:
        return set(self.owner)

    def copy(self) -> "Namespace":
        other = Namespace(self.where)
        other.owner = dict(self.owner)
        return other


def spec_namespace(cell) -> Namespace:
    """The reserved names, then the spec's own names (each one where the spec declares or defines it)."""
    ns = Namespace(str(cell.path))
    ns.reserve(reserved_names(), "a reserved name (a Python keyword or builtin, the runtime's or the generated "
                                 "module's own)")
    for table, role in ((cell.dimensions, "dimension"), (cell.inputs, "input"), (cell.states, "state"),
                        (cell.parameters, "parameter"), (getattr(cell, "constants", {}), "constant")):
        for name in table:
            ns.claim(name, f"the spec's {role} {name}")
    for name in cell.shapes:
        if name not in cell.states:
            ns.claim(name, f"the spec's quantity {name}")
    for s in cell.states:
        ns.claim(f"{s}0", f"the initial value of state {s}")
    return ns
