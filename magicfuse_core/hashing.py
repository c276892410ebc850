"""sha256 of files and bytes: what exports, engines and caches are keyed by."""
from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_files(*paths: str | Path) -> str:
    """One digest over the files in order; paths that do not exist are skipped (an optional
    external-data file next to an ONNX graph, say)."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        if path.is_file():
            with open(path, "rb") as f:
                while block := f.read(_CHUNK):
                    digest.update(block)
    return digest.hexdigest()
