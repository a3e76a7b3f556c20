"""Serving: the embedded tritonserver launcher and the logic behind each model.py (Triton-free where possible)."""
