"""Model repositories rendered from a cascade spec: the CPU stand-ins, the TensorRT-LLM engines' configs,
the PyTorch-backend (LLM API) stages, and the GPU smoke check (``python -m optistop.render --help``)."""
