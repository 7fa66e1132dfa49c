"""lstm-spec: a verified reference specification of the LSTM forward pass and its BPTT backward pass."""

__version__ = "0.1.0"
