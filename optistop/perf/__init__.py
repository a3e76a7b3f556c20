"""Performance: perf_analyzer benchmarks and their parsing, the controller benchmark, profiling, soak.

Top layer beside the CLI: may import serving, offline and tiny; nothing imports it."""
