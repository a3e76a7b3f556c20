"""Serving: the code imported inside Triton, between Triton and the core.

Triton glue and request validation (``request``, ``triton_glue``), the stage engines (``stage``,
``runner``, ``streaming``; ``llmapi_stage`` for TensorRT-LLM's PyTorch backend), BLS and remote calls to
stages (``bls``, ``remote``), the predictor runtime (``predictor_runtime``, ``onnx_numpy``), metrics
(``prometheus``), audits (``audit``) and the cascade service behind the BLS model.py (``cascade_service``).
Imports the core (optistop.*) only. Starting and supervising the server is optistop.server; rendering
repositories optistop.render; the tritonclient client optistop.client.
"""
