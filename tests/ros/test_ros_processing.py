"""The node's frame function asks the core pipeline for what is published, and warms up where frames run."""
from __future__ import annotations

import numpy as np

from magicfuse_core.pipeline import MagicFusePipeline
from magicfuse_ros.params import load_param_file
from magicfuse_ros.processing import FrameProcessor


class RecordingPipeline:
    """Wraps a real tiny pipeline and records what each call asked for."""

    inference_size = None

    def __init__(self):
        self.pipe = MagicFusePipeline.random("tiny", seed=0, steps=1)
        self.asked, self.warmups = [], []

    def __call__(self, images, **kwargs):
        self.asked.append(set(kwargs["outputs"]))
        return self.pipe(images, **kwargs)

    def warmup(self, height, width, steps=None):
        self.warmups.append((height, width, steps))


def test_unlistened_outputs_are_never_computed():
    pipeline = RecordingPipeline()
    processor = FrameProcessor(pipeline, load_param_file(None, {"model_path": "random-tiny"}))
    frame = np.zeros((24, 32, 3), np.uint8)
    result = processor.process(frame, wanted=("magimg", "segmentation"))
    assert pipeline.asked[-1] == {"magimg", "seg"}  # no CKG decode, no weight map
    assert set(result.images) == {"magimg", "segmentation"}
    processor.process(frame, wanted=("magimg", "segmentation", "ir", "fusion_weight"))
    assert pipeline.asked[-1] == {"magimg", "seg", "ckg", "weights"}


def test_warmup_runs_one_step_at_a_real_camera_size_not_a_toy_one():
    """CUDA graphs, compiled graphs and ORT arenas are per shape: warm up where frames will run."""
    pipeline = RecordingPipeline()
    params = load_param_file(None, {"model_path": "random-tiny"})
    assert FrameProcessor(pipeline, params).warmup() == (480, 640)
    pipeline.inference_size = (240, 320)
    FrameProcessor(pipeline, params).warmup()
    assert pipeline.warmups == [(480, 640, 1), (240, 320, 1)]
