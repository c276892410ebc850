"""On-disk cache of TensorRT engines that never hands back a wrong engine.

A serialized TensorRT engine is only valid for the exact network, TensorRT
version, GPU model and build settings it was made with; loading it anywhere else
fails at best and silently computes garbage at worst. So an engine is filed
under a key made of everything that decides its contents:

    ONNX sha256 + TensorRT version + GPU name + compute capability
    + precision + optimisation-profile shapes + builder flags

Layout in the cache folder, per engine:

    NAME-DIGEST.engine   the serialized engine
    NAME-DIGEST.json     the full key and the engine file's sha256
    NAME-DIGEST.lock     fcntl lock file serialising builders of that key

`EngineCache.get_or_build` takes the lock, and loads the engine only if the
sidecar's key equals the requested key field by field AND the engine file's
sha256 equals the one recorded AND the loader accepts it. Anything else (missing,
stale or mismatched sidecar, truncated or corrupt engine, a loader error) logs
one line saying why and rebuilds. Files are written to a temporary file in the
same folder and moved into place with os.replace, engine first, sidecar last, so
a crash leaves either the old complete entry or one whose sidecar does not match
(which is rebuilt), never a half-written engine that looks valid.

Nothing here imports TensorRT: the builder and the loader are passed in, so the
whole policy is tested with fakes (tests/core/test_engine_cache.py).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..hashing import sha256_bytes

log = logging.getLogger(__name__)

KEY_VERSION = 1  # bump when the meaning of a key field changes


def _canonical_shapes(shapes) -> list:
    """{input: (min, opt, max)} or {input: shape} -> sorted JSON-able list."""
    out = []
    for name in sorted(shapes):
        value = shapes[name]
        if value and isinstance(value[0], (list, tuple)):  # (min, opt, max)
            out.append([name, [[int(d) for d in s] for s in value]])
        else:
            out.append([name, [int(d) for d in value]])
    return out


@dataclass(frozen=True)
class EngineKey:
    """Everything that decides a TensorRT engine's bytes (see module docstring)."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str            # "9.0" for an H200
    precision: str                     # "fp16" | "fp32" | "bf16"
    shapes: tuple = ()                 # canonical [(input, [min, opt, max]), ...]
    builder_flags: tuple = ()          # canonical [(flag, value), ...]
    key_version: int = KEY_VERSION

    @classmethod
    def create(cls, onnx_sha256: str, tensorrt_version: str, gpu_name: str, compute_capability,
               precision: str, shapes: dict, builder_flags: dict | None = None) -> "EngineKey":
        if isinstance(compute_capability, (tuple, list)):
            compute_capability = ".".join(str(int(v)) for v in compute_capability)
        flags = tuple((str(k), json.dumps(v, sort_keys=True)) for k, v in sorted((builder_flags or {}).items()))
        shape_list = tuple((name, json.dumps(v)) for name, v in _canonical_shapes(shapes))
        return cls(str(onnx_sha256), str(tensorrt_version), str(gpu_name), str(compute_capability),
                   str(precision), shape_list, flags)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shapes"] = [list(s) for s in self.shapes]
        d["builder_flags"] = [list(f) for f in self.builder_flags]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EngineKey":
        d = dict(d)
        d["shapes"] = tuple(tuple(s) for s in d.get("shapes", ()))
        d["builder_flags"] = tuple(tuple(f) for f in d.get("builder_flags", ()))
        return cls(**d)

    def digest(self) -> str:
        return sha256_bytes(json.dumps(self.to_dict(), sort_keys=True).encode())

    def differences(self, other: "EngineKey") -> list[str]:
        """Names of the fields that differ (for the rebuild log line)."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if a[k] != b.get(k)]


@dataclass
class CacheResult:
    engine: Any               # whatever the loader returned
    path: Path
    built: bool               # True when this call built (or rebuilt) the engine
    reason: str = ""          # why it was (re)built; "" when loaded from the cache


@dataclass
class EngineCache:
    """A folder of engines keyed by `EngineKey`; see `get_or_build`."""

    folder: Path
    events: list[str] = field(default_factory=list)  # what happened, for tests and reports

    def __post_init__(self):
        self.folder = Path(self.folder)

    # ---- paths ---------------------------------------------------------------
    def paths(self, name: str, key: EngineKey) -> tuple[Path, Path, Path]:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"engine name must be [A-Za-z0-9_.-]+, got {name!r}")
        stem = f"{name}-{key.digest()[:20]}"
        return self.folder / f"{stem}.engine", self.folder / f"{stem}.json", self.folder / f"{stem}.lock"

    # ---- locking and atomic writes ---------------------------------------------
    @contextmanager
    def _locked(self, lock_path: Path):
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # blocks while another builder holds it
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _atomic_write(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # ---- lookup ----------------------------------------------------------------
    def _check_entry(self, key: EngineKey, engine_path: Path, meta_path: Path) -> tuple[bytes | None, str]:
        """(engine bytes, "") when the entry is complete and matches; (None, why) otherwise."""
        if not engine_path.is_file() and not meta_path.is_file():
            return None, "not in cache"
        if not meta_path.is_file():
            return None, "engine without key file"
        if not engine_path.is_file():
            return None, "key file without engine"
        try:
            meta = json.loads(meta_path.read_text())
            cached_key = EngineKey.from_dict(meta["key"])
            recorded_sha = meta["engine_sha256"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, f"unreadable key file ({exc.__class__.__name__})"
        if cached_key != key:
            return None, "stale key (" + ", ".join(key.differences(cached_key)) + " differ)"
        data = engine_path.read_bytes()
        if sha256_bytes(data) != recorded_sha:
            return None, "engine file does not match its recorded sha256 (corrupt or truncated)"
        return data, ""

    def get_or_build(self, name: str, key: EngineKey, build: Callable[[], bytes],
                     load: Callable[[bytes], Any]) -> CacheResult:
        """Return a loaded engine for `key`, building (and caching) it when needed.

        build(): -> serialized engine bytes (expensive; runs under the lock, so
        concurrent callers with the same key build once and the others load).
        load(bytes): -> engine object; must raise (or return None) on an engine it
        cannot use. An engine that fails to load is rebuilt once; if the fresh
        build does not load either, the error propagates.
        """
        engine_path, meta_path, lock_path = self.paths(name, key)
        with self._locked(lock_path):
            data, reason = self._check_entry(key, engine_path, meta_path)
            if data is not None:
                try:
                    engine = load(data)
                    if engine is None:
                        raise RuntimeError("loader returned None")
                    self.events.append(f"load {engine_path.name}")
                    return CacheResult(engine, engine_path, built=False)
                except Exception as exc:  # noqa: BLE001 (any loader failure means: rebuild)
                    reason = f"cached engine failed to load ({exc.__class__.__name__}: {exc})"
            log.warning("engine cache: building %s: %s", engine_path.name, reason)
            self.events.append(f"build {engine_path.name}: {reason}")
            data = build()
            if not isinstance(data, (bytes, bytearray, memoryview)) or not len(data):
                raise RuntimeError(f"engine builder for {name!r} returned no engine")
            data = bytes(data)
            engine = load(data)
            if engine is None:
                raise RuntimeError(f"freshly built engine {engine_path.name} could not be loaded")
            # Engine first, sidecar last: the sidecar (key + engine sha256) is what
            # marks an entry complete.
            meta_path.unlink(missing_ok=True)
            self._atomic_write(engine_path, data)
            meta = {"key": key.to_dict(), "engine_sha256": sha256_bytes(data), "engine_bytes": len(data)}
            self._atomic_write(meta_path, (json.dumps(meta, indent=2) + "\n").encode())
            return CacheResult(engine, engine_path, built=True, reason=reason)

    def entries(self) -> list[dict]:
        """The complete entries in the folder (their sidecars), for `build-engines --list`."""
        out = []
        for meta_path in sorted(self.folder.glob("*.json")):
            try:
                out.append({"file": meta_path.with_suffix(".engine").name, **json.loads(meta_path.read_text())})
            except (OSError, ValueError):
                continue
        return out
