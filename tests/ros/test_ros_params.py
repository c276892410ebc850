"""The node's parameters: the schema, the shipped YAML, validation and the ROS descriptors."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from magicfuse_ros import params

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "config" / "magicfuse.param.schema.json"
PARAM_YAML = REPO / "config" / "magicfuse.param.yaml"


def test_shipped_param_file_validates_against_the_schema():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(PARAM_YAML.read_text()), schema)


def test_shipped_param_file_sets_every_parameter_to_its_schema_default():
    values = yaml.safe_load(PARAM_YAML.read_text())["/**"]["ros__parameters"]
    assert values == params.defaults()


def test_schema_rejects_a_bad_param_file():
    schema = json.loads(SCHEMA.read_text())
    document = yaml.safe_load(PARAM_YAML.read_text())
    document["/**"]["ros__parameters"]["tau"] = 1.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)
    document["/**"]["ros__parameters"]["tau"] = 0.4
    document["/**"]["ros__parameters"]["typo_parameter"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)


def test_every_parameter_is_described_and_its_default_is_valid():
    for name, prop in params.parameter_schema()["properties"].items():
        assert prop.get("description"), name
        assert "default" in prop and "type" in prop, name
    declared = params.node_properties()
    assert set(declared) == {f.name for f in dataclasses.fields(params.MagicFuseParams)}
    assert set(params.parameter_schema()["required"]) == set(declared)
    params.validate(params.defaults())


def test_qos_is_set_through_ros_qos_overrides_not_home_made_parameters():
    props = params.parameter_schema()["properties"]
    for name in ("input_reliability", "input_depth", "output_depth"):
        assert name not in props
    assert "qos_overrides" in props and "qos_overrides" not in params.node_properties()
    # A parameter file with a qos_overrides section (as rcl reads it) is valid for the offline tools too.
    document = yaml.safe_load(PARAM_YAML.read_text())
    document["/**"]["ros__parameters"]["qos_overrides"] = {
        "/camera/image_raw": {"subscription": {"reliability": "reliable", "depth": 1}}}
    jsonschema.validate(document, json.loads(SCHEMA.read_text()))


def test_frames_are_never_dropped_for_their_age_by_default():
    assert params.defaults()["max_input_age_ms"] == 0.0
    assert params.defaults()["lazy_input"] is True


def test_issue_required_parameters_exist():
    props = params.parameter_schema()["properties"]
    for name in ("model_path", "device", "backend", "steps", "seed_policy", "seed", "tau", "thermal_classes",
                 "output_encoding", "max_input_age_ms", "max_input_pixels", "lazy_input",
                 "time_budget_ms"):
        assert name in props


@pytest.mark.parametrize("name,value,needle", [
    ("tau", 1.5, "maximum"),
    ("steps", -1, "minimum"),
    ("device", "gpu", "does not match"),
    ("output_encoding", "rgba8", "is not one of"),
    ("thermal_classes", ["cat"], "is not one of"),
    ("thermal_classes", [], "should be non-empty"),
    ("model_path", "", "non-empty"),
    ("backend", "tensorflow", "does not match"),
    ("max_input_age_ms", -1.0, "minimum"),
    ("subscribe_compressed", "yes", "is not of type"),
])
def test_invalid_values_name_the_parameter(name, value, needle):
    values = {**params.defaults(), name: value}
    with pytest.raises(params.ParameterError, match=needle) as info:
        params.validate(values)
    assert info.value.name == name
    assert f"'{name}'" in str(info.value)


def test_unknown_parameter_is_named():
    with pytest.raises(params.ParameterError, match="unknown parameter") as info:
        params.validate({**params.defaults(), "tua": 0.3})
    assert info.value.name == "tua"


def test_processing_size_needs_both_sides():
    with pytest.raises(params.ParameterError, match="both") as info:
        params.validate({**params.defaults(), "processing_height": 240})
    assert info.value.name == "processing_height"
    assert params.validate({**params.defaults(), "processing_height": 240, "processing_width": 320}).processing_size == (240, 320)
    assert params.validate(params.defaults()).processing_size is None


def test_load_param_file_applies_overrides_and_validates(tmp_path):
    p = params.load_param_file(PARAM_YAML, {"model_path": "random-tiny", "steps": 3})
    assert (p.model_path, p.steps, p.thermal_classes) == ("random-tiny", 3, ("person",))
    bad = tmp_path / "bad.yaml"
    bad.write_text("/**:\n  ros__parameters:\n    seed_policy: sometimes\n")
    with pytest.raises(params.ParameterError, match="seed_policy"):
        params.load_param_file(bad)


def test_descriptors_carry_type_range_and_read_only():
    pytest.importorskip("rcl_interfaces.msg", reason="ROS 2 (requirements-ros.txt) not installed")
    from rcl_interfaces.msg import ParameterType

    props = params.parameter_schema()["properties"]
    tau = params.descriptor("tau", props["tau"])
    assert tau.type == ParameterType.PARAMETER_DOUBLE and tau.read_only
    assert (tau.floating_point_range[0].from_value, tau.floating_point_range[0].to_value) == (-1.0, 1.0)
    steps = params.descriptor("steps", props["steps"])
    assert steps.type == ParameterType.PARAMETER_INTEGER
    assert (steps.integer_range[0].from_value, steps.integer_range[0].to_value) == (0, 1000)
    classes = params.descriptor("thermal_classes", props["thermal_classes"])
    assert classes.type == ParameterType.PARAMETER_STRING_ARRAY and "person" in classes.additional_constraints
    assert "rgb8" in params.descriptor("output_encoding", props["output_encoding"]).additional_constraints
    assert params.descriptor("model_path", props["model_path"]).description


def test_docs_parameter_table_is_generated_from_the_schema():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "gen_param_table.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    doc = (REPO / "docs" / "ROS.md").read_text()
    for name in params.parameter_schema()["properties"]:
        assert f"| `{name}` |" in doc


class _RecordingPipeline:
    """Stands in for MagicFusePipeline: records the call, returns one all-zero frame's outputs."""

    def __call__(self, images, **kwargs):
        from magicfuse_core.pipeline import FuseResult
        self.kwargs = kwargs
        h, w = images.shape[1:3]
        zeros = np.zeros((1, h, w, 3), np.uint8)
        return FuseResult(magimg=zeros, ikr=zeros, ckg=zeros, ir=zeros[..., 0], seg_labels=zeros[..., 0],
                          seg_logits=None, fusion_weight=np.ones((1, h, w), np.float32), weights=None,
                          steps_run=1, cut_short=False)


@pytest.mark.parametrize("tau, passed", [(-1.0, None), (0.4, 0.4), (0.0, 0.0)])
def test_negative_tau_leaves_the_models_own_tau(tau, passed):
    from magicfuse_ros.processing import FrameProcessor
    pipeline = _RecordingPipeline()
    values = {**params.defaults(), "tau": tau}
    FrameProcessor(pipeline, params.validate(values)).process(np.zeros((8, 8, 3), np.uint8))
    assert pipeline.kwargs["tau"] == passed  # None: MagicFusePipeline uses model.tau (model.json)
