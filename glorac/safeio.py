"""Safe file I/O for weights: load without executing code, write atomically, hash tensors.

* :func:`load_state_dict_file` reads ``.safetensors`` or a ``torch.save`` file with
  ``weights_only=True``: a pickle that needs code to unpickle is refused, never run.
* :func:`atomic_write` never leaves a half-written file behind: the bytes go to a
  temporary file beside the target, are fsynced, and only then renamed over it.
* :func:`tensor_digest` is the fingerprint a checkpoint keeps of its base weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from glorac.errors import CheckpointError

#: Keys under which training scripts commonly nest the weights inside a larger dict.
_NESTED_KEYS = ("state_dict", "model")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict (name → tensor) from ``path`` onto the CPU.

    Accepts ``.safetensors`` (recognised by suffix or by its header), or anything
    ``torch.save`` wrote: a plain state dict or a dict with a ``state_dict``/``model``
    entry. Raises :class:`CheckpointError` naming the file for every problem.
    """
    path = Path(path)
    _check_readable(path)
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        obj = _load_safetensors(path)
    else:
        obj = _load_torch(path)
    return _as_state_dict(obj, path)


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"weights file {path} does not exist; check the path.")
    if path.is_dir():
        raise CheckpointError(
            f"weights file {path} is a directory; pass the file inside it "
            "(e.g. model.safetensors), or use --model hf:DIR for a Hugging Face directory."
        )
    if path.stat().st_size == 0:
        raise CheckpointError(f"weights file {path} is empty (0 bytes); re-save or re-download it.")


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 0 < length <= path.stat().st_size - 8


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError, OSError, JSON errors: all mean "bad file"
        raise CheckpointError(
            f"cannot read {path} as safetensors ({_first_line(exc)}); the file is truncated "
            "or corrupt: re-save or re-download it."
        ) from None


def _load_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        # weights_only refuses any pickle that names a class or function to run.
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise CheckpointError(
                f"refusing to load {path}: it is a pickle that needs code to unpickle "
                f"({_unsupported_global(text)}), and glorac never runs code from a weights "
                "file. Re-save only the tensors, e.g. torch.save(model.state_dict(), FILE) "
                "or safetensors.torch.save_file(model.state_dict(), FILE)."
            ) from None
        raise CheckpointError(
            f"cannot read {path} as a torch.save file ({_first_line(exc)}); the file is "
            "truncated, corrupt, or not a weights file: re-save or re-download it."
        ) from None


def _unsupported_global(text: str) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", text)
    return f"it refers to {found.group(1)}" if found else "it holds a non-tensor object"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict (a dict of tensors); "
            "save model.state_dict() instead."
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path} is not a state dict: entries {', '.join(bad[:5])} are not name → tensor; "
            "save model.state_dict() (or put it under a 'state_dict' key)."
        )
    if not obj:
        raise CheckpointError(f"{path} holds no tensors; it is not a weights file.")
    return dict(obj)


def atomic_write(
    path: str | os.PathLike, write_fn: Callable[[Path], object], *, force: bool = False
) -> Path:
    """Create ``path`` by calling ``write_fn(tmp_path)``, all or nothing.

    ``write_fn`` writes the whole file at the temporary path it is given (e.g.
    ``lambda p: torch.save(obj, p)``). On any exception, KeyboardInterrupt included,
    the temporary file is removed and an existing ``path`` is left untouched. An
    existing ``path`` is refused unless ``force``. OS errors (disk full, permission)
    become :class:`CheckpointError`; anything else propagates unchanged.
    """
    path = Path(path)
    _refuse_existing(path, force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc}; check the directory.") from None
    tmp = Path(tmp_name)
    try:
        write_fn(tmp)
        _fsync_file(tmp)
        _refuse_existing(path, force)  # another process may have created it meanwhile
        os.chmod(tmp, umask_mode(0o666))  # mkstemp's 0600 would hide the file from a teammate
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise CheckpointError(
            f"writing {path} failed ({exc}); nothing was written"
            + (" and the existing file is untouched." if path.exists() else ".")
        ) from exc
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, force: bool = False) -> Path:
    """:func:`atomic_write` for a UTF-8 text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), force=force)


def umask_mode(mode: int) -> int:
    """``mode`` under the process's umask: what ``open``/``mkdir`` would have created."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def check_output(path: str | os.PathLike, *, force: bool, what: str = "output",
                 directory: bool = False) -> Path:
    """Refuse, before any work, an output that could not be written: an existing one
    without ``force``, a directory where a file is written (or a file where a directory
    is, with ``directory``), a parent path that runs through a file, a directory that
    cannot be written to. Returns the path."""
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        shape = "a directory; name a file inside it" if not directory else "a file, not a directory"
        raise CheckpointError(f"{what} {path} is {shape}.")
    if path.exists() and not force:
        raise CheckpointError(f"{what} {path} already exists; pass --force to overwrite it.")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CheckpointError(f"cannot write {what} {path}: {parent} is a file, not a directory; "
                              "choose another path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write {what} {path}: {parent} is not writable (read-only or "
                              "permission denied); choose a directory you can write to.")
    return path


def _refuse_existing(path: Path, force: bool) -> None:
    if path.is_dir():
        raise CheckpointError(f"output {path} is a directory; name a file.")
    if path.exists() and not force:
        raise CheckpointError(f"output {path} already exists; pass --force to overwrite it.")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, hence best effort.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def tensor_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 (hex) over names, dtypes, shapes and raw bytes, in sorted name order.

    Independent of iteration order and device; bf16 and other dtypes numpy lacks are
    hashed through a byte view. Meta tensors have no data: ``ValueError``.
    """
    items = sorted(named_tensors, key=lambda kv: kv[0])
    names = [name for name, _ in items]
    if len(set(names)) != len(names):
        raise ValueError("tensor_digest: duplicate tensor names")
    h = hashlib.sha256()
    for name, tensor in items:
        if tensor.is_meta:
            raise ValueError(f"tensor_digest: {name} is a meta tensor and has no data to hash")
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        header = json.dumps([name, str(t.dtype), list(tensor.shape)]).encode()
        # Length prefixes keep the stream unambiguous (no two inputs share a byte string).
        h.update(struct.pack("<Q", len(header)) + header)
        data = t.view(torch.uint8).numpy() if t.numel() else b""
        h.update(struct.pack("<Q", len(data)))
        h.update(data)
    return h.hexdigest()
