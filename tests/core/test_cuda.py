"""What only a GPU can exercise (`pytest -m cuda`, or benchmarks/gpu_check.sh): skipped without one.

CUDA-graph capture of each network, reduced-precision numerics against fp32 at the paper profile,
torch.compile, ONNX Runtime's CUDA provider, a device other than cuda:0, TensorRT when installed,
and the CLI and node on `device cuda`.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from magicfuse_core.backends.onnx_export import example_inputs
from magicfuse_core.backends.torch_fast import CUDAGraphNet
from magicfuse_core.pipeline import MagicFusePipeline

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

REPO = Path(__file__).resolve().parents[2]
PAPER = (480, 640)


def frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((1, h, w, 3)) * 255).astype(np.uint8)


def drift(result, reference) -> tuple[float, float]:
    a, b = result.magimg.astype(np.float64), reference.magimg.astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b)), float((result.seg_labels != reference.seg_labels).mean())


@pytest.fixture(scope="module")
def paper_reference():
    """fp32 eager torch at the paper profile, 480x640, 4 steps: what the fast paths are held to."""
    pipe = MagicFusePipeline.random("paper", seed=0, device="cuda", steps=4)
    return pipe(frame(*PAPER), seed=1)


@pytest.mark.parametrize("component", ["ikr", "ckg", "fusion"])
def test_cuda_graph_capture_of_each_network_replays_the_eager_result(component):
    pipe = MagicFusePipeline.random("tiny", seed=0, device="cuda")
    hook = {"ikr": pipe.ikr_denoiser, "ckg": pipe.ckg_denoiser, "fusion": pipe.fusion_net}[component]
    inputs = [v.cuda() for v in example_inputs(pipe.model, component, 1, 16, 20).values()]
    graphed = CUDAGraphNet(hook, torch.device("cuda"))
    with torch.inference_mode():
        want = hook(*inputs)
        got = graphed(*inputs)
        other = [x + 0.1 if x.dim() == 4 else x for x in inputs]
        assert not torch.equal(graphed(*other)[0] if isinstance(want, tuple) else graphed(*other),
                               got[0] if isinstance(want, tuple) else got)  # a new input is really replayed
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec, max_rel, max_changed", [
    ("torch:precision=bf16,channels_last=1", 0.05, 0.05),
    ("torch:precision=fp16,channels_last=1", 0.02, 0.02),
    ("torch:precision=bf16,channels_last=1,cuda_graph=1", 0.05, 0.05),
    ("auto", 0.05, 0.05),
])
def test_fast_paths_stay_close_to_fp32_at_the_paper_profile(paper_reference, spec, max_rel, max_changed):
    pipe = MagicFusePipeline.random("paper", seed=0, device="cuda", steps=4).use_backend(spec)
    rel, changed = drift(pipe(frame(*PAPER), seed=1), paper_reference)
    print(f"{spec}: MagImg rel. error {rel:.2e}, labels changed {changed:.2%}")
    assert rel < max_rel and changed < max_changed


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_torch_compile_matches_eager(mode):
    eager = MagicFusePipeline.random("tiny", seed=0, device="cuda", steps=3)
    want = eager(frame(64, 96), seed=2)
    spec = "torch-compiled" + (f":mode={mode}" if mode else "")
    got = MagicFusePipeline.random("tiny", seed=0, device="cuda", steps=3).use_backend(spec)(frame(64, 96), seed=2)
    rel, changed = drift(got, want)
    assert rel < 1e-2 and changed < 0.01  # reduce-overhead: the CKG call must not overwrite eps_ikr


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_onnxruntime_cuda_provider_is_really_active(tmp_path, monkeypatch):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
    monkeypatch.setenv("MAGICFUSE_CACHE", str(tmp_path))
    pipe = MagicFusePipeline.random("tiny", seed=0, device="cuda", steps=2).use_backend("onnxruntime")
    assert pipe.fusion_net.session.get_providers()[0] == "CUDAExecutionProvider"
    want = MagicFusePipeline.random("tiny", seed=0, device="cuda", steps=2)(frame(64, 96), seed=2)
    rel, _ = drift(pipe(frame(64, 96), seed=2), want)
    assert rel < 1e-2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_second_gpu_captures_and_runs_on_itself():
    with torch.cuda.device(0):  # the current device stays 0: graphs must still capture on cuda:1
        pipe = MagicFusePipeline.random("tiny", seed=0, device="cuda:1", steps=2).use_backend(
            "torch:cuda_graph=1")
        got = pipe(frame(64, 96), seed=2)
    want = MagicFusePipeline.random("tiny", seed=0, device="cuda:1", steps=2)(frame(64, 96), seed=2)
    assert drift(got, want)[0] < 1e-3


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT not installed")
def test_tensorrt_engines_run_frames_of_another_size(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGICFUSE_CACHE", str(tmp_path))
    pipe = MagicFusePipeline.random("tiny", seed=0, device="cuda", steps=2).use_backend(
        "tensorrt:precision=fp16,height=64,width=96")
    result = pipe(frame(50, 70), seed=2)  # another size: run at the engine's and resized back
    assert result.magimg.shape == (1, 50, 70, 3)


def test_cli_fuses_on_cuda(tmp_path):
    from magicfuse_core.imageio import write_png

    (tmp_path / "in").mkdir()
    write_png(tmp_path / "in" / "a.png", frame(120, 160)[0])
    cmd = [sys.executable, "-m", "magicfuse_core.cli", "fuse", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
           "--device", "cuda", "--outputs", "magimg,seg"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert "auto -> torch" in result.stderr and (tmp_path / "out" / "magimg" / "a.png").is_file()
