"""OpenAI-compatible HTTP front end over the Triton-served cascade (``optistop openai``)."""
