"""Offline: replay of recorded stage outcomes, fitting, online learning, data converters, statistics.

Imports the core (optistop.*) only; nothing here runs inside the server."""
