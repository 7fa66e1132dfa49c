"""Forward and backward through time with the generated reference of the canonical LSTM."""
import numpy as np

from lstm_spec.reference import lstm

T, B, D, H = 5, 2, 3, 4
rng = np.random.default_rng(0)
sizes = {"D": D, "H": H}
params = {name: 0.5 * rng.standard_normal([sizes[d] for d in dims])  # W_f: (H, D), U_f: (H, H), b_f: (H,), ...
          for name, dims in lstm.SIGNATURE.parameters.items()}
x = rng.standard_normal((T, B, D))  # time-major: (T, B, D)

y, final, cache = lstm.forward(params, x)  # y: (T, B, H); final["h"], final["c"]: (B, H); h0 = c0 = 0
dy = np.ones_like(y)  # dL/dy for the loss L = sum(y)
grads = lstm.backward(cache, dy, {})  # {}: the loss does not read the final states
print(grads["W_f"].shape, grads["x"].shape, grads["h0"].shape)  # (4, 3) (5, 2, 3) (2, 4)
