"""optistop: an optimal-stopping LLM cascade served by Triton Inference Server.

Importing the package does no work: no model loads, no I/O (see STYLE practice 7).
"""

__version__ = "0.1.0"
