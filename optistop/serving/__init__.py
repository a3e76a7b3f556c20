"""Logic behind the Triton Python-backend models, importable (and tested) without Triton."""
