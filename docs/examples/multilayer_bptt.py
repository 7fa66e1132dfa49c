"""BPTT through a stack of L LSTM layers with a softmax output: the course slides' loops with their four
errors fixed (see the errata page). Each cell step, forward and backward, is the generated reference
run on one step; everything else here is the loop structure, which is the point."""
import numpy as np

from lstm_spec.reference import lstm


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def multilayer_bptt(layers, Wy, by, x, target):
    """layers: the canonical LSTM parameters of layers 1..L (a list, layer k at index k - 1); x: (T, B, D);
    target: (T, B, classes), one-hot. Loss: the cross-entropy summed over the steps.
    Returns (grads per layer, dWy, dby, dx)."""
    T, L = len(x), len(layers)
    zeros = [np.zeros((x.shape[1], p["U_f"].shape[0])) for p in layers]
    h = {(0, k): zeros[k] for k in range(L)}  # h[t, k]: layer k's hidden state after step t
    C = {(0, k): zeros[k] for k in range(L)}  # t = 0: the initial states
    cache, Y = {}, {}
    for t in range(1, T + 1):  # forward: for t = 1..T, for layer k = 1..L
        below = x[t - 1]
        for k in range(L):  # the step starts from the PREVIOUS states C[t-1, k], h[t-1, k]  (fix 2)
            _, final, cache[t, k] = lstm.forward(layers[k], below[None],
                                                 h0=h[t - 1, k], c0=C[t - 1, k])
            h[t, k], C[t, k] = final["h"], final["c"]
            below = h[t, k]
        Y[t] = softmax(h[t, L - 1] @ Wy.T + by)

    grads = [{name: np.zeros_like(v) for name, v in p.items()} for p in layers]
    dWy, dby, dx = np.zeros_like(Wy), np.zeros_like(by), np.zeros_like(x)
    dh = [np.zeros_like(z) for z in zeros]  # what step t+1 sends back to step t of layer k;
    dC = [np.zeros_like(z) for z in zeros]  # at t = T: the final states' cotangents, here 0  (fix 4)
    for t in range(T, 0, -1):  # backward: for t = T..1
        dz = Y[t] - target[t - 1]  # softmax with cross-entropy, not a sigmoid's derivative   (fix 1)
        dWy += dz.T @ h[t, L - 1]
        dby += dz.sum(axis=0)
        from_above = dz @ Wy  # the output's gradient goes INTO the top layer's dh      (fix 3)
        for k in range(L - 1, -1, -1):  # for layer k = L..1: the top one first, none skipped (fix 4)
            g = lstm.backward(cache[t, k], None, {"h": dh[k] + from_above, "c": dC[k]})
            dh[k], dC[k] = g["h0"], g["c0"]  # sent back to step t-1 of the same layer
            from_above = g["x"][0]  # layer k's input adjoint: what layer k - 1 receives at step t
            for name in grads[k]:
                grads[k][name] += g[name]  # parameter gradients: sums over time
        dx[t - 1] = from_above
    return grads, dWy, dby, dx
