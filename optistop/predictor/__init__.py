"""The quality predictor: features -> MLP training, evaluation, ONNX export with its sidecar.

Imports the core, optistop.offline.stats, and optistop.serving.predictor_runtime (the export checks that
the served runtime gives the exported confidences); the server never imports this package.
"""
