"""Checkpoints: written atomically with a SHA-256 beside them, read back with weights_only=True."""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or corrupted."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> str:
    """Write ``state`` to ``path`` atomically (temp file + rename); return its SHA-256."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    digest = sha256_bytes(data)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        Path(str(path) + ".sha256").write_text(digest + "\n")
    except OSError as error:  # full disk, read-only folder: no half-written file is left behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write checkpoint {path}: {error}. Earlier checkpoints are "
                              "kept; free disk space or set KDWB_HOME to a writable folder") from error
    return digest


def load_checkpoint(path: str | Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """Read a checkpoint, checking its SHA-256 (given, or from the file beside it)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    if expected_sha256 is None:
        side = Path(str(path) + ".sha256")
        expected_sha256 = side.read_text().strip() if side.exists() else None
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise CheckpointError(f"checkpoint {path} is damaged: its SHA-256 does not match the one "
                              f"recorded when it was written")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # a file torch cannot parse is as bad as a wrong checksum
        raise CheckpointError(f"checkpoint {path} cannot be read: {error}") from error
