"""Serving: everything between Triton and the core.

Triton glue and request validation (``request``), the stage engine (``stage``, ``runner``), BLS calls to
stages (``bls``), the predictor runtime, Prometheus metrics, the cascade service behind the BLS model.py,
the embedded tritonserver launcher, repository rendering and the tritonclient helpers. Imports the core
(optistop.*) only.
"""
