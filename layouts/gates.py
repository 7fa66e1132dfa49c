"""Each system's gate order, written once: the converters, adapters, checks, benchmark and docs import it.

An order is the order of the gate blocks in a stacked array (4H rows for an LSTM, 3H for a GRU), in
lstm-spec's gate letters: f forget, i input, c candidate (PyTorch's g), o output; r reset, z update, n new.
"""

from __future__ import annotations

LSTM_GATES = ("f", "i", "c", "o")  # the canonical cell's gates in spec/lstm.toml's order (W_f, W_i, W_c, W_o)
TORCH_LSTM_ORDER = ("i", "f", "c", "o")  # nn.LSTM / LSTMCell weight_ih rows: i, f, g, o
KERAS_LSTM_ORDER = ("i", "f", "c", "o")  # Keras 3 LSTM kernel columns
CUDNN_LSTM_ORDER = ("i", "f", "c", "o")  # CUDNN_LSTM
MXNET_LSTM_ORDER = ("i", "f", "c", "o")  # gluon.rnn.LSTM, the RNN operator
ONNX_LSTM_ORDER = ("i", "o", "f", "c")  # ONNX LSTM W, R, B: the output gate second
TF1_LSTM_ORDER = ("i", "c", "f", "o")  # tf.compat.v1.nn.rnn_cell.LSTMCell: i, j (= c), f, o
FLAX_LSTM_NAMES = {"i": "i", "f": "f", "c": "g", "o": "o"}  # our gate -> Flax's letter (named, not stacked)

GRU_GATES = ("r", "z", "n")  # spec/gru_reset_*.toml's gates; also PyTorch's and Flax's order
TORCH_GRU_ORDER = GRU_GATES  # nn.GRU / GRUCell weight_ih rows
KERAS_GRU_ORDER = ("z", "r", "n")  # Keras 3 GRU kernel columns (z, r, h)
ONNX_GRU_ORDER = ("z", "r", "n")  # ONNX GRU W, R, B (z, r, h)
