"""The bundled model families (CPU stand-ins for 7B / 32B / 72B): members, training, evaluation, task suites.

Imports the core and optistop.engines.runner (generation); the core and serving import nothing from here."""
