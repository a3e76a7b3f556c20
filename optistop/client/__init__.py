"""Clients of a served cascade over tritonclient (the ``optistop-client`` command, the soak, the benchmarks)."""
