"""optistop: an optimal-stopping LLM cascade served by Triton Inference Server.

Importing the package does no work: no model loads, no I/O (see STYLE practice 7).
"""

from pathlib import Path

__version__ = "0.1.0"

# The checkout (or installed tree) root: cascade.toml, model_repository/, models/ live here.
ROOT = Path(__file__).resolve().parent.parent
