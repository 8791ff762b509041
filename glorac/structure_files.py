"""Structure files: the JSON ``glorac search --structure`` writes and fold, eval and
finetune read with ``--structure FILE``."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from pydantic import ValidationError

from .errors import GloraError
from .ir import Structure
from .safeio import atomic_write


def read_structure(path: Union[str, Path]) -> Structure:
    """The structure in ``path``; GloraError naming the file and the first problem."""
    try:
        return Structure.model_validate_json(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GloraError(f"structure file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GloraError(f"cannot read structure file {path}: {exc}.") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise GloraError(f"{path} is not a glorac structure file ({exc.error_count()} problem(s); first at "
                         f"`{where}`: {first['msg']}). Use the JSON that `glorac search` writes.") from None


def write_structure(structure: Structure, path: Union[str, Path], *, force: bool = False) -> Path:
    text = structure.model_dump_json(indent=2)
    return atomic_write(path, lambda tmp: tmp.write_text(text), force=force)
