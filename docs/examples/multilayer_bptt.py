"""BPTT through a stack of L LSTM layers with a softmax output: the course slides' loops with their four
errors fixed (see the errata page). Each cell step, forward and backward, is the generated reference
run on one step; everything else here is the loop structure, which is the point."""
import numpy as np

from lstm_spec.reference import lstm


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def multilayer_bptt(layers, Wy, by, x, target):
    """layers: the canonical LSTM parameters of layers 1..L (a list); x: (T, B, D); target: (T, B, K),
    one-hot. Loss: the cross-entropy summed over the steps. Returns (grads per layer, dWy, dby, dx)."""
    T, L = len(x), len(layers)
    zeros = [np.zeros((x.shape[1], p["U_f"].shape[0])) for p in layers]
    h = {(0, l): zeros[l] for l in range(L)}  # h[t, l]: layer l's hidden state after step t
    C = {(0, l): zeros[l] for l in range(L)}  # t = 0: the initial states
    cache, Y = {}, {}
    for t in range(1, T + 1):  # forward: for t = 1..T, for l = 1..L
        below = x[t - 1]
        for l in range(L):  # the step reads the PREVIOUS states C[t-1, l], h[t-1, l]   (fix 2)
            _, final, cache[t, l] = lstm.forward(layers[l], below[None], h0=h[t - 1, l], c0=C[t - 1, l])
            h[t, l], C[t, l] = final["h"], final["c"]
            below = h[t, l]
        Y[t] = softmax(h[t, L - 1] @ Wy.T + by)

    grads = [{k: np.zeros_like(v) for k, v in p.items()} for p in layers]
    dWy, dby, dx = np.zeros_like(Wy), np.zeros_like(by), np.zeros_like(x)
    dh = [np.zeros_like(z) for z in zeros]  # what step t+1 sends back to step t of layer l;
    dC = [np.zeros_like(z) for z in zeros]  # at t = T: the final states' cotangents, here 0  (fix 4)
    for t in range(T, 0, -1):  # backward: for t = T..1
        dz = Y[t] - target[t - 1]  # softmax with cross-entropy, not a sigmoid's derivative   (fix 1)
        dWy += dz.T @ h[t, L - 1]
        dby += dz.sum(axis=0)
        from_above = dz @ Wy  # the output's gradient goes INTO the top layer's dh      (fix 3)
        for l in range(L - 1, -1, -1):  # for l = L..1: every layer, the top one first      (fix 4)
            g = lstm.backward(cache[t, l], None, {"h": dh[l] + from_above, "c": dC[l]})
            dh[l], dC[l] = g["h0"], g["c0"]  # sent back to step t-1 of the same layer
            from_above = g["x"][0]  # layer l's input adjoint: what layer l-1 receives at step t
            for k in grads[l]:
                grads[l][k] += g[k]  # parameter gradients: sums over time
        dx[t - 1] = from_above
    return grads, dWy, dby, dx
