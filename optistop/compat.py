"""What differs between the Python versions the package supports (3.10 to 3.13)."""

from __future__ import annotations

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser as the tomli package (pinned for < 3.11)
    import tomli as tomllib

__all__ = ["tomllib"]
