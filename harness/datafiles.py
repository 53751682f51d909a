"""kconform's own data files (kernel definitions, pinned-root recipes): a TOML table of known
fields, read with the same errors for each kind: the file, the field and the fix."""
from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import KconformError


def read_table(path: Path, text: str, *, fields: Mapping[str, str], required: Sequence[str],
               kind: str, example: str) -> dict[str, Any]:
    """The file's table, with no field outside `fields` (name -> how to write it) and every
    `required` one present; `kind` names the file in messages, `example` is one valid line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KconformError(f"{path}: not valid TOML ({exc}); fix the file, e.g. "
                            f"{example}") from None
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise KconformError(f"{path}: unknown field {unknown[0]!r}; {kind} has "
                            f"{', '.join(fields)}")
    missing = [name for name in required if name not in data]
    if missing:
        raise KconformError(f"{path}: missing field {missing[0]!r}; add {fields[missing[0]]}")
    return data
