"""Reliability under load and faults, against servers they start: the soak (good and bad requests mixed
for a while, then leaks and failures counted) and chaos (every backend process killed in turn, recovery
timed). Benchmarks of speed are optistop.perf."""
