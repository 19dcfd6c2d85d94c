"""The trained models that ship inside the package, and resolving a checkpoint argument.

Every function that reads a checkpoint takes a path or the name of a shipped model; a path
that exists wins over a name.
"""

from __future__ import annotations

import os
from pathlib import Path

MODELS_DIR = Path(__file__).parent / "models"
SHIPPED_MODELS = {"small-4x": "small-4x.pt"}
"""Name -> weights file in `MODELS_DIR` (a model card `<name>.md` lies beside each)."""


def shipped_path(name: str) -> Path | None:
    """The weights file of the shipped model `name`, or None when there is none."""
    file = SHIPPED_MODELS.get(name)
    return None if file is None else MODELS_DIR / file


def resolve_checkpoint(path_or_name: str | os.PathLike) -> Path:
    """An existing file, else the shipped model of that name; FileNotFoundError (one line,
    listing the shipped names) when neither exists."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    shipped = shipped_path(str(path_or_name))
    if shipped is not None and shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"{path_or_name}: no such checkpoint file or shipped model "
        f"(shipped: {', '.join(SHIPPED_MODELS)})"
    )
