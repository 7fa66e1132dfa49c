"""The LSTM weight layouts of the frameworks, as the framework layout page shows them: the systems that
``lstm_spec.layouts`` converts (their gate orders read from its constants, so the page follows the code)
and three that it documents without a converter (TensorFlow 1, cuDNN, MXNet). Each entry cites where its
framework documents the order. Used by the page's table (:func:`extra_rows_md`, :func:`sources_md`) and by
the colour-block figure (``figures.layout_blocks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lstm_spec.layouts.gates import (
    CUDNN_LSTM_ORDER,
    FLAX_LSTM_NAMES,
    KERAS_LSTM_ORDER,
    LSTM_GATES,
    MXNET_LSTM_ORDER,
    ONNX_LSTM_ORDER,
    TF1_LSTM_ORDER,
)
from lstm_spec.layouts.gates import TORCH_LSTM_ORDER as TORCH_ORDER


@dataclass(frozen=True)
class FrameworkLayout:
    name: str
    order: tuple[str, ...]  # our gate letters (f, i, c, o) in the framework's order
    weights: str  # the stacked arrays and their shapes
    biases: str
    source: str  # where the framework documents the order (a URL)
    letters: dict = field(default_factory=dict)  # our letter -> the framework's name for the block
    converter: bool = True  # lstm_spec.layouts converts it
    stacked: bool = True  # False: one array per gate, nothing to order

    def letter(self, gate: str) -> str:
        return self.letters.get(gate, gate)


LSTM_LAYOUTS = (
    FrameworkLayout("lstm-spec (canonical)", LSTM_GATES, "W_g (H, D), U_g (H, H): one array per gate",
                    "b_g (H,): one per gate", "spec/lstm.toml", stacked=False),
    FrameworkLayout("PyTorch nn.LSTM", TORCH_ORDER, "weight_ih (4H, D), weight_hh (4H, H)",
                    "bias_ih + bias_hh, (4H,) each",
                    "https://pytorch.org/docs/stable/generated/torch.nn.LSTM.html", {"c": "g"}),
    FrameworkLayout("Keras 3 LSTM", KERAS_LSTM_ORDER, "kernel (D, 4H), recurrent_kernel (H, 4H): blocks are columns",
                    "bias (4H,)", "https://github.com/keras-team/keras/blob/master/keras/src/layers/rnn/lstm.py"),
    FrameworkLayout("ONNX LSTM", ONNX_LSTM_ORDER, "W [dirs, 4H, D], R [dirs, 4H, H]", "B [dirs, 8H] = Wb then Rb",
                    "https://onnx.ai/onnx/operators/onnx__LSTM.html"),
    FrameworkLayout("Flax linen LSTMCell", tuple(FLAX_LSTM_NAMES), "ii, if, ig, io (D, H); hi, hf, hg, ho (H, H)",
                    "on the h side only", "https://flax.readthedocs.io/en/latest/api_reference/flax.linen/"
                    "_autosummary/flax.linen.LSTMCell.html", dict(FLAX_LSTM_NAMES), stacked=False),
    FrameworkLayout("TF1 tf.compat.v1.nn.rnn_cell.LSTMCell", TF1_LSTM_ORDER,
                    "kernel (D + H, 4H): one matrix over [x; h], blocks are columns",
                    "bias (4H,), plus forget_bias (default 1.0) added to the f block at every step, not stored",
                    "https://www.tensorflow.org/api_docs/python/tf/compat/v1/nn/rnn_cell/LSTMCell",
                    {"c": "j"}, converter=False),
    FrameworkLayout("cuDNN (CUDNN_LSTM)", CUDNN_LSTM_ORDER,
                    "8 matrices: linLayerID 0-3 on the input, 4-7 on h",
                    "two: one per matrix (input side and recurrent side), added",
                    "https://docs.nvidia.com/deeplearning/cudnn/latest/api/cudnn-adv-library.html"
                    "#cudnngetrnnweightparams", {"c": "c′"}, converter=False),
    FrameworkLayout("MXNet (gluon.rnn.LSTM, the RNN operator)", MXNET_LSTM_ORDER,
                    "i2h_weight (4H, D), h2h_weight (4H, H)", "i2h_bias + h2h_bias, (4H,) each",
                    "https://mxnet.apache.org/versions/1.9.1/api/python/docs/api/gluon/rnn/index.html"
                    "#mxnet.gluon.rnn.LSTM", {"c": "g"}, converter=False),
)

WHERE_STATED = {
    "PyTorch nn.LSTM": "the weight_ih_l[k] entry: (W_ii|W_if|W_ig|W_io)",
    "Keras 3 LSTM": "the cell's call: the kernel's columns split into i, f, c, o (the page itself does not state it)",
    "ONNX LSTM": "the inputs W, R, B: the concatenation of W[iofc]",
    "Flax linen LSTMCell": "the equations: one Dense per gate, named i, f, g, o",
    "TF1 tf.compat.v1.nn.rnn_cell.LSTMCell": "its source (rnn_cell_impl.py): i, j, f, o = split(...) with "
    "'i = input_gate, j = new_input, f = forget_gate, o = output_gate'; forget_bias in the constructor",
    "cuDNN (CUDNN_LSTM)": "cudnnGetRNNWeightParams and cudnnRNNMode_t: linLayerID 0 and 4 the input gate, 1 and 5 "
    "the forget gate, 2 and 6 the new memory gate, 3 and 7 the output gate",
    "MXNet (gluon.rnn.LSTM, the RNN operator)": "the equations of gluon.rnn.LSTM (i, f, g, o) and LSTMCell's "
    "slicing of its gates in that order",
}


def _order_text(layout: FrameworkLayout) -> str:
    return ", ".join(layout.letter(g) + (f" (= {g})" if layout.letter(g) not in (g,) else "") for g in layout.order)


def extra_rows_md() -> list[str]:
    """Table rows (the page's columns: system, gate order, input weights, recurrent weights, biases) of the
    frameworks documented here without a converter."""
    rows = []
    for lay in LSTM_LAYOUTS:
        if not lay.converter:
            rows.append(f"| {lay.name} (documented, no converter) | {_order_text(lay)} | {lay.weights} | "
                        f"(see input weights) | {lay.biases} |")
    return rows


def sources_md() -> str:
    """Where each framework states its gate order: a list of links."""
    items = [f"- **{lay.name}**: [{lay.source.split('//', 1)[-1].split('/', 1)[0]}]({lay.source}), "
             f"{WHERE_STATED[lay.name]}." for lay in LSTM_LAYOUTS if lay.source.startswith("http")]
    return "\n".join(items)
