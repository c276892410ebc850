"""TensorRT engine cache policy, tested with a fake builder and loader (no TensorRT needed)."""
from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time

import pytest

from magicfuse_core.backends.engine_cache import EngineCache, EngineKey


def make_key(**changes) -> EngineKey:
    fields = dict(onnx_sha256="a" * 64, tensorrt_version="10.9.0", gpu_name="NVIDIA H200", compute_capability=(9, 0),
                  precision="fp16", shapes={"x": ((1, 16, 8, 8), (1, 16, 120, 160), (2, 16, 120, 160))},
                  builder_flags={"workspace_gib": 8, "tf32": False})
    fields.update(changes)
    return EngineKey.create(**fields)


class FakeEngine:
    def __init__(self, data: bytes):
        if not data.startswith(b"ENGINE:"):
            raise ValueError("not an engine")
        self.data = data


class FakeBuilder:
    """Counts builds; the engine's bytes name the key they were built for."""

    def __init__(self, payload: bytes = b"ENGINE:ok", delay: float = 0.0):
        self.calls = 0
        self.payload = payload
        self.delay = delay

    def __call__(self) -> bytes:
        self.calls += 1
        time.sleep(self.delay)
        return self.payload


def test_key_changes_with_each_field():
    base = make_key()
    variants = {
        "onnx_sha256": make_key(onnx_sha256="b" * 64),
        "tensorrt_version": make_key(tensorrt_version="10.10.0"),
        "gpu_name": make_key(gpu_name="NVIDIA H100 80GB HBM3"),
        "compute_capability": make_key(compute_capability=(8, 9)),
        "precision": make_key(precision="fp32"),
        "shapes": make_key(shapes={"x": ((1, 16, 8, 8), (1, 16, 60, 80), (2, 16, 120, 160))}),
        "builder_flags": make_key(builder_flags={"workspace_gib": 8, "tf32": True}),
    }
    digests = {base.digest()} | {k.digest() for k in variants.values()}
    assert len(digests) == len(variants) + 1
    for field_name, key in variants.items():
        assert key.differences(base) == [field_name]


def test_key_is_canonical_and_round_trips():
    a = make_key(builder_flags={"tf32": False, "workspace_gib": 8})
    b = make_key(builder_flags={"workspace_gib": 8, "tf32": False})
    assert a == b and a.digest() == b.digest()
    assert EngineKey.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    assert make_key(compute_capability="9.0") == make_key(compute_capability=(9, 0))


def test_second_call_loads_without_building(tmp_path):
    cache, builder = EngineCache(tmp_path), FakeBuilder()
    first = cache.get_or_build("ikr", make_key(), builder, FakeEngine)
    second = cache.get_or_build("ikr", make_key(), builder, FakeEngine)
    assert first.built and not second.built
    assert builder.calls == 1
    assert second.engine.data == b"ENGINE:ok"


def test_changed_key_builds_a_new_engine_and_never_loads_the_old_one(tmp_path):
    cache = EngineCache(tmp_path)
    cache.get_or_build("ikr", make_key(precision="fp16"), FakeBuilder(b"ENGINE:fp16"), FakeEngine)
    res = cache.get_or_build("ikr", make_key(precision="fp32"), FakeBuilder(b"ENGINE:fp32"), FakeEngine)
    assert res.built and res.engine.data == b"ENGINE:fp32"


def test_stale_key_file_at_the_same_path_is_rebuilt(tmp_path, caplog):
    cache, key = EngineCache(tmp_path), make_key()
    cache.get_or_build("ikr", key, FakeBuilder(b"ENGINE:old"), FakeEngine)
    _, meta_path, _ = cache.paths("ikr", key)
    meta = json.loads(meta_path.read_text())
    meta["key"]["tensorrt_version"] = "8.6.1"  # as if copied from another machine
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level("WARNING"):
        res = cache.get_or_build("ikr", key, FakeBuilder(b"ENGINE:new"), FakeEngine)
    assert res.built and res.engine.data == b"ENGINE:new"
    assert "stale key (tensorrt_version differ)" in res.reason
    assert "building" in caplog.text


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_engine", "delete_meta", "garbage_meta"])
def test_damaged_entry_is_rebuilt(tmp_path, damage):
    cache, key = EngineCache(tmp_path), make_key()
    cache.get_or_build("fusion", key, FakeBuilder(b"ENGINE:" + b"x" * 100), FakeEngine)
    engine_path, meta_path, _ = cache.paths("fusion", key)
    if damage == "truncate":
        engine_path.write_bytes(engine_path.read_bytes()[:20])
    elif damage == "flip":
        data = bytearray(engine_path.read_bytes())
        data[50] ^= 0xFF
        engine_path.write_bytes(bytes(data))
    elif damage == "delete_engine":
        engine_path.unlink()
    elif damage == "delete_meta":
        meta_path.unlink()
    else:
        meta_path.write_text("{not json")
    builder = FakeBuilder(b"ENGINE:rebuilt")
    res = cache.get_or_build("fusion", key, builder, FakeEngine)
    assert builder.calls == 1 and res.built and res.engine.data == b"ENGINE:rebuilt"
    assert cache.get_or_build("fusion", key, builder, FakeEngine).built is False


def test_engine_that_fails_to_load_is_rebuilt(tmp_path):
    cache, key = EngineCache(tmp_path), make_key()
    loads = {"n": 0}

    def flaky_load(data: bytes):
        loads["n"] += 1
        if loads["n"] == 2:  # the cached copy fails (e.g. driver update), the rebuilt one loads
            raise RuntimeError("deserializeCudaEngine failed")
        return FakeEngine(data)

    cache.get_or_build("ckg", key, FakeBuilder(), flaky_load)
    res = cache.get_or_build("ckg", key, FakeBuilder(), flaky_load)
    assert res.built and "failed to load" in res.reason


def test_builder_failure_leaves_no_entry(tmp_path):
    cache, key = EngineCache(tmp_path), make_key()

    def broken():
        raise RuntimeError("parser error")

    with pytest.raises(RuntimeError, match="parser error"):
        cache.get_or_build("ikr", key, broken, FakeEngine)
    engine_path, meta_path, _ = cache.paths("ikr", key)
    assert not engine_path.exists() and not meta_path.exists()
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_write_is_atomic_via_replace(tmp_path, monkeypatch):
    """The engine appears in one os.replace from a temp file in the same folder."""
    cache, key = EngineCache(tmp_path), make_key()
    replaced = []
    real_replace = os.replace

    def spy(src, dst):
        replaced.append((os.path.dirname(src), os.path.basename(dst)))
        assert os.path.getsize(src) > 0
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    cache.get_or_build("ikr", key, FakeBuilder(), FakeEngine)
    engine_path, meta_path, _ = cache.paths("ikr", key)
    assert replaced == [(str(tmp_path), engine_path.name), (str(tmp_path), meta_path.name)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([engine_path.name, meta_path.name, engine_path.stem + ".lock"])


def test_concurrent_builders_in_threads_build_once(tmp_path):
    builder = FakeBuilder(delay=0.3)
    results = []

    def worker():
        results.append(EngineCache(tmp_path).get_or_build("ikr", make_key(), builder, FakeEngine))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert builder.calls == 1
    assert sorted(r.built for r in results) == [False, False, True]


def _process_builder(folder: str, counter: str) -> None:
    def build():
        with open(counter, "a") as f:
            f.write("built\n")
        time.sleep(0.3)
        return b"ENGINE:proc"

    EngineCache(folder).get_or_build("ikr", make_key(), build, FakeEngine)


def test_concurrent_builders_in_processes_build_once(tmp_path):
    counter = tmp_path / "count.txt"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_process_builder, args=(str(tmp_path / "cache"), str(counter))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=20)
        assert p.exitcode == 0
    assert counter.read_text().count("built") == 1


def test_bad_engine_name_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="engine name"):
        EngineCache(tmp_path).paths("../x", make_key())

