"""``lstm-spec bench``: the speed of the generated reference (forward + full BPTT backward) against
PyTorch's nn.LSTM and a jitted JAX scan LSTM, with the same threads, interleaved repetitions, a gradient
check on every point, the GEMM rate of the machine and the memory against the minimum BPTT cache; and
the cost of ``lstm-spec generate --check`` and ``lstm-spec verify``.

problem.py: points, data, FLOPs, minimum cache. worker.py: one process per implementation.
runner.py: the measurement and the JSON. report.py: tables and the plot (console and docs). cli.py: the
command. Benchmarks are not timed tests: tests/bench/test_bench.py only checks that this works and measures
the right computation.
"""
