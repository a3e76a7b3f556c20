"""Stage engines, served inside Triton as the cascade's stage models with TensorRT-LLM's tensor contract:
the CPU engine over transformers (``stage``, ``runner``) and TensorRT-LLM's PyTorch backend through its LLM
API (``llmapi_stage``, ``llmapi_host``, ``triton_models/``). Imports the core and optistop.serving's
request checks and Triton glue; the cascade (optistop.serving) never imports an engine."""
