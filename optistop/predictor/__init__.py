"""The quality predictor: features -> MLP training, evaluation, ONNX export with its sidecar.

Imports the core and optistop.offline.stats; the server runs the exported ONNX through
optistop.serving.predictor_runtime, never this package."""
