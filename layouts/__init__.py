"""Converters between lstm-spec's canonical parameters (one matrix per gate, named as in the spec:
W_f, U_f, b_f, ...) and other layouts: the stacked 4H layout of the source notes, and PyTorch's.

| layout | input weights | recurrent weights | biases | gate order |
|---|---|---|---|---|
| lstm-spec (spec/lstm.toml) | W_f, W_i, W_c, W_o: (H, D) | U_f, U_i, U_c, U_o: (H, H) | b_f, b_i, b_c, b_o: (H,) | named |
| stacked (to_stacked) | W: (4H, D) | U: (4H, H) | b: (4H,) | ``order``, default i, f, c, o |
| PyTorch nn.LSTM / LSTMCell | weight_ih: (4H, D) | weight_hh: (4H, H) | bias_ih + bias_hh: (4H,) each | i, f, g (= c), o |
"""  # noqa: E501 - a Markdown table, one row per line

from .frameworks import (
    Layout,
    from_flax_lstm,
    from_keras_lstm,
    from_onnx_lstm,
    grads_from_layout,
    to_flax_gru,
    to_flax_lstm,
    to_keras_gru,
    to_keras_lstm,
    to_layout,
    to_onnx_gru,
    to_onnx_lstm,
)
from .stacked import GATES, from_stacked, from_torch_lstm, to_stacked, to_torch_lstm

# Keras 3, ONNX and Flax converters and the conformance protocol's Layout: see frameworks.py (table there).
__all__ = ["GATES", "Layout", "from_flax_lstm", "from_keras_lstm", "from_onnx_lstm", "from_stacked", "from_torch_lstm",
           "grads_from_layout", "to_flax_gru", "to_flax_lstm", "to_keras_gru", "to_keras_lstm", "to_layout",
           "to_onnx_gru", "to_onnx_lstm", "to_stacked", "to_torch_lstm"]
