"""model.py files that render copies into GPU repositories (not imported by the package)."""
