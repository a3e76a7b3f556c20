"""Offline: replay of recorded stage outcomes, fitting, the served cascade's twin (stream), data converters, statistics.

Imports the core (optistop.*) only; nothing here runs inside the server."""
