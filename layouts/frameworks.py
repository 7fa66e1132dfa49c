"""Converters between lstm-spec's canonical per-gate parameters and the layouts of other systems, and
the generic layout of the conformance protocol (``Layout``).

Canonical (spec/lstm.toml): W_g (H, D), U_g (H, H), b_g (H,) for the gates g = f, i, c, o; one bias per
gate; y = W_g x + U_g h + b_g.

| system | input weights | recurrent weights | biases | gate order |
|---|---|---|---|---|
| PyTorch nn.LSTM / LSTMCell (`to_torch_lstm`, in stacked.py) | weight_ih (4H, D) | weight_hh (4H, H) | bias_ih + bias_hh, (4H,) each | i, f, g (= c), o |
| Keras 3 LSTM (`to_keras_lstm`) | kernel (D, 4H), transposed | recurrent_kernel (H, 4H) | bias (4H,), one | i, f, c, o |
| ONNX LSTM (`to_onnx_lstm`) | W [dirs, 4H, D] | R [dirs, 4H, H] | B [dirs, 8H] = Wb then Rb | i, o, f, c |
| Flax linen LSTMCell / OptimizedLSTMCell (`to_flax_lstm`) | ii, if, ig, io: kernel (D, H), no bias | hi, hf, hg, ho: kernel (H, H) | bias on the h side only | i, f, g, o (named) |
| PyTorch nn.GRU / GRUCell (conformance/adapters/torch_adapter.py `to_torch`) | weight_ih (3H, D) | weight_hh (3H, H) | bias_ih, bias_hh; n blocks = b_n and b_hn | r, z, n |
| Keras 3 GRU (`to_keras_gru`) | kernel (D, 3H) | recurrent_kernel (H, 3H) | reset_after: bias (2, 3H) = input row, recurrent row (h block of the recurrent row = b_hn); else (3H,) | z, r, h (= n) |
| ONNX GRU (`to_onnx_gru`) | W [dirs, 3H, D] | R [dirs, 3H, H] | B [dirs, 6H] = Wb, Rb; linear_before_reset=1: Rb's h block = b_hn | z, r, h (= n) |
| Flax linen GRUCell (`to_flax_gru`) | ir, iz, in: kernel (D, H) and bias | hr, hz: kernel (H, H), no bias; hn: kernel and bias (= b_hn) | one per gate, plus b_hn | r, z, n (named) |

GRU cells: ``gru_reset_after`` (W_g, U_g, b_g for g = r, z, n, and b_hn inside r * (U_n h + b_hn)) and
``gru_reset_before`` (no b_hn; r scales h before U_n).

Differences that matter when converting:

- Two-bias systems (PyTorch, ONNX, cuDNN) add both biases: any split b = b_ih + b_hh is the same
  model, and the gradient of *each* equals the gradient of our single b. A single-bias system given a
  two-bias model needs b_ih + b_hh, not one of them (keras-onnx #103, flax #3746).
- Keras stores kernels transposed ((D, 4H)); ONNX puts the output gate second (i, o, f, c).
- Keras' ``unit_forget_bias`` adds 1 to the forget block once, at initialisation: the stored bias is
  the bias. TF1's ``forget_bias`` is added at every step and not stored: convert with
  ``b_f = stored + forget_bias``.
- Flax's carry is ``(c, h)``, not ``(h, c)``.

All converters are pure data movement (copies); gradients convert the same way, because every
conversion is a permutation, a transposition or a split of a sum (see ``grads_from_layout``).
"""  # noqa: E501 - a Markdown table, one row per line

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .gates import FLAX_LSTM_NAMES, GRU_GATES, KERAS_GRU_ORDER, KERAS_LSTM_ORDER, ONNX_GRU_ORDER, ONNX_LSTM_ORDER
from .stacked import LayoutError, from_stacked, require, to_stacked


def _blocks(params, kind, order):
    arrays = require(params, [f"{kind}_{g}" for g in order])
    return list(arrays.values())


def _gru_params(params, extra=()):
    """The per-gate GRU arrays W_g, U_g, b_g (g = r, z, n, plus ``extra``), checked: present, one dtype."""
    return require(params, [f"{k}_{g}" for k in ("W", "U", "b") for g in GRU_GATES] + list(extra))


# ----------------------------------------------------------------------------------------- Keras 3
def to_keras_lstm(params: dict) -> dict:
    """Canonical -> Keras 3 ``LSTM`` weights (``layer.cell.kernel``, ``recurrent_kernel``, ``bias``)."""
    s = to_stacked(params, KERAS_LSTM_ORDER)
    return {"kernel": s["W"].T.copy(), "recurrent_kernel": s["U"].T.copy(), "bias": s["b"]}


def from_keras_lstm(weights: dict) -> dict:
    """Keras 3 ``LSTM`` weights (kernel, recurrent_kernel, bias) -> canonical."""
    a = require(weights, ("kernel", "recurrent_kernel", "bias"), "weights")
    for key in ("kernel", "recurrent_kernel"):
        if a[key].ndim != 2:
            raise LayoutError(f"weights[{key!r}]: got shape {a[key].shape}, expected (D, 4H) / (H, 4H)")
    return from_stacked({"W": a["kernel"].T, "U": a["recurrent_kernel"].T, "b": a["bias"]}, KERAS_LSTM_ORDER)


# ----------------------------------------------------------------------------------------- ONNX
def to_onnx_lstm(params: dict, bias_ih: dict | None = None) -> dict:
    """Canonical -> ONNX ``LSTM`` initializers for one direction: W [1, 4H, D], R [1, 4H, H],
    B [1, 8H] (Wb then Rb), gates i, o, f, c. ``bias_ih`` ({b_g: part}) chooses the split of each
    bias between Wb and Rb (default: all in Wb). For two directions concatenate on axis 0."""
    o = ONNX_LSTM_ORDER
    s = to_stacked(params, o)
    b = s["b"]
    if bias_ih:
        parts = require(bias_ih, [f"b_{g}" for g in o], "bias_ih")
        wb = np.concatenate(list(parts.values()))
        if wb.shape != b.shape or wb.dtype != b.dtype:
            raise LayoutError(f"bias_ih: got {wb.shape[0]} values of dtype {wb.dtype} in all, expected {b.shape[0]} "
                              f"of dtype {b.dtype} (one H-vector per gate, like b_g)")
    else:
        wb = b.copy()
    return {"W": s["W"][None], "R": s["U"][None], "B": np.concatenate([wb, b - wb])[None]}


def from_onnx_lstm(W, R, B=None, direction: int = 0) -> dict:
    """ONNX ``LSTM`` W, R, B (one direction of them) -> canonical; Wb and Rb are summed."""
    arrays = {"W": np.asarray(W), "R": np.asarray(R)}
    if B is not None:
        arrays["B"] = np.asarray(B)
    onnx_shapes = {"W": "[num_directions, 4H, D]", "R": "[num_directions, 4H, H]", "B": "[num_directions, 8H]"}
    for name, a in arrays.items():
        if a.ndim != len(onnx_shapes[name].split(",")):
            raise LayoutError(f"{name}: got shape {a.shape}, expected the ONNX shape {onnx_shapes[name]}")
        if isinstance(direction, bool) or not 0 <= direction < a.shape[0]:
            raise LayoutError(f"direction: got {direction}, but {name} holds {a.shape[0]} direction(s)")
    W, R = arrays["W"][direction], arrays["R"][direction]
    H = R.shape[-1]
    b = np.zeros(8 * H, W.dtype) if B is None else arrays["B"][direction]
    if b.shape != (8 * H,):
        raise LayoutError(f"B: got {b.shape[0]} values per direction, "
                          f"expected 8H = {8 * H} (Wb then Rb, H = {H} from R)")
    return from_stacked({"W": W, "U": R, "b": b[:4 * H] + b[4 * H:]}, ONNX_LSTM_ORDER)


# ----------------------------------------------------------------------------------------- Flax
def to_flax_lstm(params: dict) -> dict:
    """Canonical -> the ``params`` collection of Flax linen ``LSTMCell`` / ``OptimizedLSTMCell``:
    {"ii": {"kernel": (D, H)}, ..., "hi": {"kernel": (H, H), "bias": (H,)}, ...}."""
    to_stacked(params)  # checks names, shapes and dtypes
    out = {}
    for g, n in FLAX_LSTM_NAMES.items():
        out[f"i{n}"] = {"kernel": np.asarray(params[f"W_{g}"]).T.copy()}
        out[f"h{n}"] = {"kernel": np.asarray(params[f"U_{g}"]).T.copy(), "bias": np.asarray(params[f"b_{g}"]).copy()}
    return out


def from_flax_lstm(tree: dict) -> dict:
    """Flax linen LSTMCell ``params`` -> canonical (inverse of ``to_flax_lstm``)."""
    if not isinstance(tree, dict):
        raise LayoutError(f"tree: expected the dict of Flax LSTMCell params, got {type(tree).__name__}")
    wanted = [(f"i{n}", "kernel") for n in FLAX_LSTM_NAMES.values()]
    wanted += [(f"h{n}", leaf) for n in FLAX_LSTM_NAMES.values() for leaf in ("kernel", "bias")]
    missing = [f"{m}/{leaf}" for m, leaf in wanted if leaf not in tree.get(m, {})]
    if missing:
        raise LayoutError(f"tree: missing {missing}; expected Flax LSTMCell params (ii, if, ig, io with a kernel; "
                          "hi, hf, hg, ho with a kernel and a bias)")
    out = {}
    for g, n in FLAX_LSTM_NAMES.items():
        out[f"W_{g}"] = np.asarray(tree[f"i{n}"]["kernel"]).T.copy()
        out[f"U_{g}"] = np.asarray(tree[f"h{n}"]["kernel"]).T.copy()
        out[f"b_{g}"] = np.asarray(tree[f"h{n}"]["bias"]).copy()
    return out


# ----------------------------------------------------------------------------------------- GRU


def _split(params, bias_ih, order):
    """Input-side and recurrent-side bias vectors (gate blocks in ``order``) for a two-bias GRU layout:
    b_g = ih_g + hh_g for r and z; the n block is b_n (input side) and b_hn (recurrent side, when the
    cell has it)."""
    _gru_params(params)
    H = np.asarray(params["b_r"]).shape[0]
    ih, hh = [], []
    for g in order:
        b = np.asarray(params[f"b_{g}"])
        if g == "n":
            ih.append(b)
            hh.append(np.asarray(params["b_hn"]) if "b_hn" in params else np.zeros(H, b.dtype))
        else:
            part = np.asarray(bias_ih[f"b_{g}"]) if bias_ih and f"b_{g}" in bias_ih else b
            if part.shape != b.shape or part.dtype != b.dtype:
                raise LayoutError(f"bias_ih['b_{g}']: got shape {part.shape} and dtype {part.dtype}, expected "
                                  f"{b.shape} and {b.dtype} like b_{g}")
            ih.append(part)
            hh.append(b - part)
    return np.concatenate(ih), np.concatenate(hh)


def to_keras_gru(params: dict, bias_ih: dict | None = None) -> dict:
    """Canonical GRU -> Keras 3 ``GRU`` weights. ``gru_reset_after`` (with b_hn) -> reset_after=True,
    bias (2, 3H); ``gru_reset_before`` -> reset_after=False, bias (3H,)."""
    o = KERAS_GRU_ORDER
    out = {"kernel": np.concatenate(_blocks(params, "W", o), axis=0).T.copy(),
           "recurrent_kernel": np.concatenate(_blocks(params, "U", o), axis=0).T.copy()}
    if "b_hn" in params:
        out["bias"] = np.stack(_split(params, bias_ih, o))
    else:
        out["bias"] = np.concatenate(_blocks(params, "b", o))
    return out


def to_onnx_gru(params: dict, bias_ih: dict | None = None) -> dict:
    """Canonical GRU -> one direction of ONNX ``GRU``'s W [1, 3H, D], R [1, 3H, H], B [1, 6H] (gates
    z, r, h). Use ``linear_before_reset=1`` for ``gru_reset_after`` and 0 for ``gru_reset_before``
    (whose b_n then sits all in Wb)."""
    o = ONNX_GRU_ORDER
    ih, hh = _split(params, bias_ih, o)
    return {"W": np.concatenate(_blocks(params, "W", o))[None], "R": np.concatenate(_blocks(params, "U", o))[None],
            "B": np.concatenate([ih, hh])[None]}


def to_flax_gru(params: dict) -> dict:
    """Canonical ``gru_reset_after`` -> Flax linen ``GRUCell`` params (ir/iz/in with bias, hr/hz
    without, hn with bias = b_hn)."""
    _gru_params(params, ("b_hn",))
    out = {}
    for g in GRU_GATES:
        out[f"i{g}"] = {"kernel": np.asarray(params[f"W_{g}"]).T.copy(), "bias": np.asarray(params[f"b_{g}"]).copy()}
        out[f"h{g}"] = {"kernel": np.asarray(params[f"U_{g}"]).T.copy()}
    out["hn"]["bias"] = np.asarray(params["b_hn"]).copy()
    return out


# ----------------------------------------------------------------------------------------- protocol
SEQ_AXES = ("T", "B", "F")  # the canonical order of a sequence (x, y, dy, the gradient of x): time, batch, features


@dataclass(frozen=True)
class Layout:
    """How a user's implementation wants its arrays (the conformance protocol, conformance/PROTOCOL.md).

    params: "per_gate" (W_f, U_f, b_f, ... as in the spec), "stacked" (W, U, b with the gate blocks
    of ``gate_order`` on the first axis) or "combined" (one kernel W (nH, D+H) over the concatenated
    input, [x; h] or [h; x] as ``concat`` says, and b); transposed: matrices as (in, out), i.e. W_g
    (D, H), W (D, nH) or the combined W (D+H, nH); biases: 1 (b_g / b) or 2 (b_g_ih + b_g_hh / b_ih +
    b_hh, both added); bias_shape: "vector" (nH,) / (H,) or "row" (1, nH) / (1, H); axes: x, y and
    their cotangents as a permutation of ("T", "B", "F") (default: ("B", "T", "F") if batch_major,
    else ("T", "B", "F")); batch: False for an implementation of one sequence, x (T, D) (axes then a
    permutation of ("T", "F")) and the states (H,). Parameters that are not W/U/b of a gate
    (peepholes, ...) pass through unchanged."""

    params: str = "per_gate"
    gate_order: tuple = ()
    transposed: bool = False
    biases: int = 1
    batch_major: bool = False
    concat: str = "xh"
    bias_shape: str = "vector"
    axes: tuple = ()
    batch: bool = True

    def __post_init__(self):
        if self.params not in ("per_gate", "stacked", "combined"):
            raise LayoutError(f"layout params: expected 'per_gate', 'stacked' or 'combined', got {self.params!r}")
        if self.biases not in (1, 2) or isinstance(self.biases, bool):
            raise LayoutError(f"layout biases: expected 1 or 2, got {self.biases!r}")
        for flag in ("transposed", "batch_major", "batch"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise LayoutError(f"layout {flag}: expected True or False, got {getattr(self, flag)!r}")
        if not isinstance(self.gate_order, (tuple, list)) or not all(isinstance(g, str) for g in self.gate_order):
            raise LayoutError(f"layout gate_order: expected a tuple of gate letters, got {self.gate_order!r}")
        for key, accepted in (("concat", ("xh", "hx")), ("bias_shape", ("vector", "row"))):
            if getattr(self, key) not in accepted:
                raise LayoutError(f"layout {key}: expected {' or '.join(map(repr, accepted))}, got "
                                  f"{getattr(self, key)!r}")
        want = SEQ_AXES if self.batch else ("T", "F")
        if self.axes and (not isinstance(self.axes, (tuple, list)) or sorted(self.axes) != sorted(want)):
            raise LayoutError(f"layout axes: expected a permutation of {want}, got {self.axes!r}")

    @property
    def seq_axes(self) -> tuple:
        """The order of x, y and their cotangents: a permutation of (T, B, F), or of (T, F) without a batch."""
        if self.axes:
            return tuple(self.axes)
        order = ("B", "T", "F") if self.batch_major else SEQ_AXES
        return order if self.batch else tuple(a for a in order if a != "B")


def seq_to_layout(a, layout: Layout) -> np.ndarray:
    """A time-major sequence (T, B, F) -> ``layout``'s axis order. Without a batch dimension (``layout.batch``
    False) ``a`` is one batch element, (T, 1, F), and comes out without its batch axis."""
    a = np.asarray(a)
    if not layout.batch:
        a = a[:, 0]
    have = SEQ_AXES if layout.batch else ("T", "F")
    return np.ascontiguousarray(np.transpose(a, [have.index(x) for x in layout.seq_axes]))


def seq_from_layout(a, layout: Layout) -> np.ndarray:
    """A sequence in ``layout``'s axis order -> time-major (T, B, F) (inverse of ``seq_to_layout``; (T, 1, F)
    without a batch dimension). LayoutError when it has another number of axes."""
    a = np.asarray(a)
    order = layout.seq_axes
    if a.ndim != len(order):
        raise LayoutError(f"got shape {a.shape}, expected {len(order)} axes ({', '.join(order)})"
                          f"{'' if layout.batch else ': one sequence, no batch dimension'}")
    have = SEQ_AXES if layout.batch else ("T", "F")
    a = np.transpose(a, [order.index(x) for x in have])
    return a if layout.batch else a[:, None]


def state_to_layout(a, layout: Layout) -> np.ndarray:
    """A state or a state's cotangent (B, ...) -> ``layout``'s: the same, or (...) of the one batch
    element without a batch dimension."""
    a = np.asarray(a)
    return a if layout.batch else np.ascontiguousarray(a[0])


def state_from_layout(a, layout: Layout) -> np.ndarray:
    """Inverse of ``state_to_layout``: (B, ...) (with B = 1 without a batch dimension)."""
    a = np.asarray(a)
    return a if layout.batch else a[None]


def gate_names(param_names) -> tuple:
    """The gates of a cell: the g of its W_g parameters that have a U_g too (W_hr of the projection
    cell is no gate), in the spec's order."""
    names = set(param_names)
    return tuple(n[2:] for n in param_names if n.startswith("W_") and f"U_{n[2:]}" in names)


def _order(layout: Layout, gates) -> tuple:
    order = tuple(layout.gate_order) or tuple(gates)
    if sorted(order) != sorted(gates):
        raise LayoutError(f"gate_order: expected a permutation of {tuple(gates)}, got {order}")
    return order


def _bias_out(a, layout: Layout) -> np.ndarray:
    """A gate bias (n,) as ``layout`` shapes it: (n,) or the row (1, n)."""
    return a.reshape(1, -1) if layout.bias_shape == "row" else a


def _bias_in(a, layout: Layout) -> np.ndarray:
    """A bias gradient in ``layout``'s shape -> (n,); any other shape is kept (the comparison reports it)."""
    a = np.asarray(a)
    return a[0] if layout.bias_shape == "row" and a.ndim == 2 and a.shape[0] == 1 else a


def to_layout(params: dict, layout: Layout, bias_ih: dict | None = None) -> dict:
    """Canonical parameters -> the arrays of ``layout``. With two biases, ``bias_ih`` ({b_g: part})
    is the input-side part and the recurrent side gets the rest (default: all on the input side).
    A kind (W, U or b) is stacked / split only when every gate has one; other parameters pass through."""
    if not isinstance(params, dict):
        raise LayoutError(f"params: expected a dict of arrays, got {type(params).__name__}")
    gates = gate_names(params)
    unknown = [k for k in (bias_ih or {}) if k not in {f"b_{g}" for g in gates}]
    if unknown:
        raise LayoutError(f"bias_ih: unknown key(s) {unknown}; expected some of {[f'b_{g}' for g in gates]}")
    kinds = [k for k in ("W", "U", "b") if gates and all(f"{k}_{g}" in params for g in gates)]
    gated = {f"{k}_{g}" for k in kinds for g in gates}
    out = {k: np.asarray(v) for k, v in params.items() if k not in gated}
    ih = {g: np.asarray((bias_ih or {}).get(f"b_{g}", params[f"b_{g}"])) for g in gates if f"b_{g}" in params}
    for g, part in ih.items():
        b = np.asarray(params[f"b_{g}"])
        if part.shape != b.shape or part.dtype != b.dtype:
            raise LayoutError(f"bias_ih['b_{g}']: got shape {part.shape} and dtype {part.dtype}, expected {b.shape} "
                              f"and {b.dtype} like b_{g} (never broadcast or cast)")
    if layout.params == "per_gate":
        return {**out, **_per_gate(params, layout, gates, kinds, ih)}
    if not gates:
        raise LayoutError(f"{layout.params} layout: the cell has no per-gate W_g parameters to stack; use per_gate")
    return {**out, **_stacked(params, layout, _order(layout, gates), kinds, ih)}


def _per_gate(params, layout: Layout, gates, kinds, ih) -> dict:
    out = {}
    for g in gates:
        for k in kinds:
            a = np.asarray(params[f"{k}_{g}"])
            if k != "b":
                out[f"{k}_{g}"] = a.T.copy() if layout.transposed else a.copy()
            elif layout.biases == 1:
                out[f"b_{g}"] = _bias_out(a.copy(), layout)
            else:
                out[f"b_{g}_ih"], out[f"b_{g}_hh"] = _bias_out(ih[g].copy(), layout), _bias_out(a - ih[g], layout)
    return out


def _stacked(params, layout: Layout, order, kinds, ih) -> dict:
    """W, U (or the combined W over [x; h] / [h; x]) and b (or b_ih, b_hh), gate blocks in ``order``."""
    out = {k: np.concatenate(_blocks(params, k, order)) for k in kinds if k != "b"}
    if layout.params == "combined":
        if "W" not in out or "U" not in out:
            raise LayoutError("combined layout: the cell has no W_g and U_g for every gate to combine")
        out["W"] = np.concatenate([out["W"], out.pop("U")] if layout.concat == "xh" else [out.pop("U"), out["W"]],
                                  axis=1)
    if layout.transposed:
        out = {k: v.T.copy() for k, v in out.items()}
    if "b" in kinds and layout.biases == 1:
        out["b"] = _bias_out(np.concatenate(_blocks(params, "b", order)), layout)
    elif "b" in kinds:
        b_ih = np.concatenate([ih[g] for g in order])
        out["b_ih"] = _bias_out(b_ih, layout)
        out["b_hh"] = _bias_out(np.concatenate(_blocks(params, "b", order)) - b_ih, layout)
    return out


def _uncombine(grads: dict, layout: Layout, input_size: int | None) -> dict:
    """The gradient of a combined kernel (in its own orientation) -> W and U, also as (nH, D) / (nH, H)."""
    if "W" not in grads:
        return grads
    if not isinstance(input_size, (int, np.integer)) or isinstance(input_size, bool):
        raise LayoutError("combined layout: the input size D is needed to split the kernel (input_size=...)")
    a = np.asarray(grads["W"])
    a = a.T if layout.transposed else a
    if a.ndim != 2 or a.shape[1] <= input_size:
        raise LayoutError(f"gradient 'W': got shape {np.asarray(grads['W']).shape}, expected the combined kernel "
                          f"{'(D+H, nH)' if layout.transposed else '(nH, D+H)'} with D = {input_size}")
    cut = input_size if layout.concat == "xh" else a.shape[1] - input_size
    first, second = a[:, :cut], a[:, cut:]
    w, u = (first, second) if layout.concat == "xh" else (second, first)
    out = {k: v for k, v in grads.items() if k != "W"}
    out["W"], out["U"] = (w.T, u.T) if layout.transposed else (w, u)  # as a (transposed) stacked layout has them
    return out


def grads_from_layout(grads: dict, layout: Layout, gates, input_size: int | None = None) -> dict:
    """A target's parameter gradients in ``layout`` -> canonical names; with two biases the keys are
    ``b_g(ih)`` and ``b_g(hh)`` (each should equal the canonical gradient of b_g). A combined kernel
    needs ``input_size`` (D) to be split into the W and U parts."""
    t = (lambda a: np.asarray(a).T) if layout.transposed else np.asarray
    out = {}
    if layout.params == "per_gate":
        for k, v in grads.items():
            if k.startswith(("W_", "U_")) and k[2:] in gates:
                out[k] = t(v)
            elif k.endswith(("_ih", "_hh")) and k.startswith("b_") and layout.biases == 2 and k[2:-3] in gates:
                out[f"{k[:-3]}({k[-2:]})"] = _bias_in(v, layout)
            elif k.startswith("b_") and k[2:] in gates:
                out[k] = _bias_in(v, layout)
            else:
                out[k] = np.asarray(v)
        return out
    if layout.params == "combined":
        grads = _uncombine(grads, layout, input_size)
    order = _order(layout, gates)
    n = len(order)
    stacked = {"W": "W", "U": "U"}
    stacked.update({"b": "b"} if layout.biases == 1 else {"b_ih": "b", "b_hh": "b"})
    for k, v in grads.items():
        if k not in stacked:
            out[k] = np.asarray(v)
            continue
        a = _bias_in(v, layout) if k.startswith("b") else t(v)
        if a.ndim == 0 or a.shape[0] % n:
            raise LayoutError(f"gradient {k!r}: got shape {np.asarray(v).shape}, expected {n} gate blocks")
        for g, blk in zip(order, np.split(a, n, axis=0), strict=True):
            name = f"{stacked[k]}_{g}"
            out[name if k in ("W", "U", "b") else f"{name}({k[-2:]})"] = blk
    return out
