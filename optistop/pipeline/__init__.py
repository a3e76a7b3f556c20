"""Bring your own cascade: build a repository, collect through the server, label, calibrate.

Runnable steps connected by files (optistop repo -> serve -> collect -> label -> calibrate). Imports the
core, serving (tokenizers, the stage contract, rendering), offline (replay fitting) and predictor."""
