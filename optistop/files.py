"""Reading the project's JSON and TOML artifacts (a policy, a predictor sidecar, a cascade spec) with one
behaviour: a missing or unparsable file becomes the caller's own error class in one line that names the
file, what was wrong and what to do."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from optistop.compat import tomllib


def read_document(path: Path, error: Callable[[str], Exception], *, missing: str, fix: str = "",
                  toml: bool = False) -> Any:
    """The parsed JSON (or, with ``toml``, TOML) document at ``path``. Raises ``error(message)``:
    "{path}: {missing}" when the file is absent, "{path}: not valid JSON (...)" or "{path}: not valid
    TOML: ..." when it does not parse, followed by "; {fix}" when a fix is given."""
    tail = f"; {fix}" if fix else ""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    try:
        return tomllib.loads(text) if toml else json.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}{tail}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc}){tail}") from None


def json_lines(lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line of a JSON Lines file; a line that does not
    parse gives its ``json.JSONDecodeError`` as the value, for the caller to refuse or skip by name."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            yield n, exc
