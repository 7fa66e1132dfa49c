"""ONNX Runtime adapter: the ONNX ``LSTM`` operator, built with the ``onnx`` helper API and run by
ONNX Runtime's CPU provider, forward only (ONNX Runtime has no training gradients here). Directions
forward, reverse and bidirectional; ``sequence_lens``; ``layout`` 0 (time-major; ORT's CPU kernel rejects layout 1);
two layers as two chained operators; the ``GRU`` operator for ``gru_reset_after``
(``linear_before_reset=1``) and ``gru_reset_before`` (``linear_before_reset=0``); diagonal peepholes ``P`` (cell
``peephole``) and ``input_forget=1`` (cell ``cifg_f``, f = 1 - i) and ``clip`` (cell ``lstm_clip``, the bound read
from its spec) when those cells exist in the spec.

ONNX's layout: W [dirs, 4H, D], R [dirs, 4H, H], B [dirs, 8H] (Wb then Rb), gates i, o, f, c; P
[dirs, 3H] in the order i, o, f; Y [T, dirs, B, H]; a reverse pass returns its outputs in original
time order. ONNX Runtime's float32 kernels approximate the logistic and tanh functions: its float32
tolerance is looser (("conform:onnxruntime", "float32") in lstm_spec.checks.tolerances).
"""

from __future__ import annotations

import numpy as np

from lstm_spec.layouts.frameworks import ONNX_LSTM_ORDER, to_onnx_gru

from ..problem import Case, Problem, slot_key
from ..targets import Target
from . import available_cells
from ._lazy import require, version

require("onnx", "onnxruntime")  # missing: load_adapter reports the install command (exit 3); imported per use


# cell -> (operator, attributes)
def _clip_bound(cell: str) -> float:
    """The bound of the clip function declared in the cell's spec file."""
    import tomllib

    from lstm_spec.spec import SPEC_DIR

    with open(SPEC_DIR / f"{cell}.toml", "rb") as fh:
        spec = tomllib.load(fh)
    bound = spec["functions"]["clip"]["bound"]
    if isinstance(bound, str):  # the name of a constant of [constants]: {value = ..., doc = ...} or the value
        bound = spec["constants"][bound]
        bound = bound["value"] if isinstance(bound, dict) else bound
    return float(bound)


_ONNX_CELLS = {"lstm": ("LSTM", {}), "peephole": ("LSTM", {}), "cifg_f": ("LSTM", {"input_forget": 1}),
               "lstm_clip": ("LSTM", {"clip": "from_spec"}),
               "gru_reset_after": ("GRU", {"linear_before_reset": 1}),
               "gru_reset_before": ("GRU", {"linear_before_reset": 0})}




def onnx_lstm_weights(params: dict, bias_ih: dict) -> dict:
    """One direction's W [4H, D], R [4H, H], B [8H] and, with peepholes, P [3H], from canonical
    parameters (gates absent from the cell, e.g. f of a coupled cell, get zero blocks)."""
    H = next(np.asarray(v).shape[0] for k, v in params.items() if k.startswith("U_"))
    D = next(np.asarray(v).shape[1] for k, v in params.items() if k.startswith("W_"))
    dt = next(iter(params.values())).dtype
    def z(*s):
        return np.zeros(s, dt)
    W = np.concatenate([params.get(f"W_{g}", z(H, D)) for g in ONNX_LSTM_ORDER])
    R = np.concatenate([params.get(f"U_{g}", z(H, H)) for g in ONNX_LSTM_ORDER])
    b = np.concatenate([params.get(f"b_{g}", z(H)) for g in ONNX_LSTM_ORDER])
    wb = np.concatenate([bias_ih.get(f"b_{g}", z(H)) for g in ONNX_LSTM_ORDER])
    out = {"W": W, "R": R, "B": np.concatenate([wb, b - wb])}
    if any(k.startswith("p_") for k in params):
        out["P"] = np.concatenate([params.get(f"p_{g}", z(H)) for g in ("i", "o", "f")])
    return out


class OnnxRuntimeLSTM(Target):
    name = "onnxruntime"
    # ORT 1.31's CPU LSTM kernel: "LSTM operator does not support double yet"
    dtypes = ("float32",)
    features = frozenset({"reverse", "lengths", "bidirectional", "layers"})
    biases = 2
    tolerance_key = "conform:onnxruntime"
    # ONNX Runtime's CPU LSTM kernel rejects layout=1 ("Batchwise recurrent operations (layout == 1) are
    # not supported", onnxruntime 1.31): the batch-major graph is built by _model but not run by default.
    variants = ()

    def __init__(self):
        self.cells = available_cells(_ONNX_CELLS)
        self.description = ("ONNX LSTM operator (onnx helper API, opset 14) on ONNX Runtime's CPU provider, "
                            "forward only; cells " + ", ".join(self.cells))

    def versions(self) -> str:
        return f"onnx {version('onnx')}, onnxruntime {version('onnxruntime')}"

    def supports(self, case: Case) -> str | None:
        why = super().supports(case)
        if why:
            return why
        if case.variant == "layout=1" and (case.layers > 1 or case.ndir > 1):
            return "layout=1 is tested on single-layer, single-direction cases"
        return None

    def _model(self, problem: Problem):
        import onnx  # here and in run: conform's main process loads the adapter without onnx (_lazy)
        from onnx import TensorProto, helper, numpy_helper

        case = problem.case
        T, B, D, _ = case.shape
        H = problem.output_size
        ndir = case.ndir
        elem = TensorProto.DOUBLE if case.dtype == "float64" else TensorProto.FLOAT
        layout = 1 if case.variant == "layout=1" else 0
        direction = case.direction
        nodes, inits = [], []
        x_shape = [B, T, D] if layout else [T, B, D]
        inputs = [helper.make_tensor_value_info("X", elem, x_shape)]
        outputs = []
        feed = {"X": np.swapaxes(problem.x, 0, 1) if layout else problem.x}
        if problem.lengths is not None:
            inputs.append(helper.make_tensor_value_info("seq", TensorProto.INT32, [B]))
            feed["seq"] = problem.lengths.astype(np.int32)
        cur = "X"
        op, op_attrs = _ONNX_CELLS[case.cell]
        states = problem.states
        for layer in range(case.layers):
            if op == "GRU":
                ws = [{k: v[0] for k, v in to_onnx_gru(problem.params[layer * ndir + d],
                                                        problem.bias_ih[layer * ndir + d]).items()}
                      for d in range(ndir)]
            else:
                ws = [onnx_lstm_weights(problem.params[layer * ndir + d], problem.bias_ih[layer * ndir + d])
                      for d in range(ndir)]
            names = {}
            for key in ("W", "R", "B", "P"):
                if key in ws[0]:
                    names[key] = f"{key}{layer}"
                    inits.append(numpy_helper.from_array(np.stack([w[key] for w in ws]), names[key]))
            for s in states:
                name = f"init_{s}{layer}"
                a = np.stack([problem.init[layer * ndir + d][s] for d in range(ndir)])
                a = np.swapaxes(a, 0, 1) if layout else a
                inputs.append(helper.make_tensor_value_info(name, elem, list(a.shape)))
                feed[name] = np.ascontiguousarray(a)
            ins = [cur, names["W"], names["R"], names["B"], "seq" if problem.lengths is not None else "",
                   f"init_h{layer}"] + ([f"init_c{layer}", names.get("P", "")] if op == "LSTM" else [])
            while ins[-1] == "":
                ins.pop()
            attrs = dict(hidden_size=H, direction=direction, **op_attrs)
            if attrs.get("clip") == "from_spec":
                attrs["clip"] = _clip_bound(case.cell)
            if layout:
                attrs["layout"] = 1
            outs = [f"Y{layer}"] + [f"Y{s}{layer}" for s in states]
            nodes.append(helper.make_node(op, ins, outs, **attrs))
            st_shape = [B, ndir, H] if layout else [ndir, B, H]
            outputs += [helper.make_tensor_value_info(o, elem, st_shape) for o in outs[1:]]
            if layer + 1 < case.layers:  # [T, dirs, B, H] -> [T, B, dirs * H]
                nodes.append(helper.make_node("Transpose", [f"Y{layer}"], [f"Yt{layer}"], perm=[0, 2, 1, 3]))
                shape = f"shape{layer}"
                inits.append(numpy_helper.from_array(np.array([T, B, ndir * H], np.int64), shape))
                nodes.append(helper.make_node("Reshape", [f"Yt{layer}", shape], [f"X{layer + 1}"]))
                cur = f"X{layer + 1}"
        outputs.insert(0, helper.make_tensor_value_info(f"Y{case.layers - 1}", elem,
                                                        [B, T, ndir, H] if layout else [T, ndir, B, H]))
        graph = helper.make_graph(nodes, "lstm_spec_conformance", inputs, outputs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model, feed, layout

    def run(self, problem: Problem) -> dict:
        case = problem.case
        model, feed, layout = self._model(problem)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        outs = sess.run(None, feed)
        y = outs[0]
        if layout:  # [B, T, dirs, H] -> [T, dirs, B, H]
            y = np.transpose(y, (1, 2, 0, 3))
        T, ndir, B, H = y.shape
        res = {"y": np.transpose(y, (0, 2, 1, 3)).reshape(T, B, ndir * H)}
        st = problem.states
        for layer in range(case.layers):
            for j, s in enumerate(st):
                a = outs[1 + len(st) * layer + j]
                a = np.swapaxes(a, 0, 1) if layout else a
                for d in range(ndir):
                    res[slot_key(f"{s}_T", case.slots[layer * ndir + d])] = a[d]
        return res
