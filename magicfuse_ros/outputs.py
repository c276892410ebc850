"""The node's topics, in one table: what it publishes, where, in which encoding, and when.

A leaf module (imports nothing of ours, nor ROS): the node creates its publishers
from `IMAGE_OUTPUTS`, the offline bag replay writes one message per entry, and the
live replay and the tests subscribe to `topics(namespace)`.

Topic names are relative to the node (`~/` + name): with the node `magicfuse` in
namespace `/front`, `output/magimg` is `/front/magicfuse/output/magimg`.
"""
from __future__ import annotations

from dataclasses import dataclass

NODE_NAME = "magicfuse"

# Pipeline products (the core pipeline's `outputs=` names) an image output is made from.
PIPELINE_MAGIMG, PIPELINE_SEG, PIPELINE_CKG, PIPELINE_WEIGHTS = "magimg", "seg", "ckg", "weights"


@dataclass(frozen=True)
class ImageOutput:
    """One sensor_msgs/Image output of the node."""

    name: str                        # short name: counters, bag replay, PNG folders
    topic: str                       # relative to the node (~/<topic>)
    encodings: tuple[str, ...]       # allowed encodings; the first is the default
    encoding_parameter: str | None   # the parameter choosing among `encodings`, if there is a choice
    needs: str                       # the pipeline product it is made from
    lazy: bool                       # computed and published only while the topic has a subscriber

    def encoding(self, params) -> str:
        """The encoding this output is published in under `params` (anything with the parameter attributes)."""
        return getattr(params, self.encoding_parameter) if self.encoding_parameter else self.encodings[0]


IMAGE_OUTPUTS: tuple[ImageOutput, ...] = (
    ImageOutput("magimg", "output/magimg", ("rgb8", "bgr8"), "output_encoding", PIPELINE_MAGIMG, lazy=False),
    ImageOutput("segmentation", "output/segmentation", ("mono8",), None, PIPELINE_SEG, lazy=False),
    ImageOutput("segmentation_color", "output/segmentation/color", ("rgb8",), None, PIPELINE_SEG, lazy=True),
    ImageOutput("ir", "output/ir", ("mono8",), None, PIPELINE_CKG, lazy=True),
    ImageOutput("fusion_weight", "output/fusion_weight", ("mono8", "32FC1"), "fusion_weight_encoding", PIPELINE_WEIGHTS,
                lazy=True),
)
IMAGE_OUTPUT_NAMES: tuple[str, ...] = tuple(o.name for o in IMAGE_OUTPUTS)

# Other topics of the node (relative names), by role.
INPUT_IMAGE = "input/image"                            # sensor_msgs/Image
INPUT_COMPRESSED = "input/image/compressed"            # sensor_msgs/CompressedImage (subscribe_compressed)
INPUT_CAMERA_INFO = "input/camera_info"                # sensor_msgs/CameraInfo (optional)
OUTPUT_CAMERA_INFO = "output/camera_info"              # sensor_msgs/CameraInfo, one per published frame
CLASS_LIST = "output/segmentation/class_list"          # std_msgs/String, latched JSON
DEBUG_PROCESSING_TIME = "debug/processing_time_ms"     # std_msgs/Float64
DEBUG_PIPELINE_LATENCY = "debug/pipeline_latency_ms"   # std_msgs/Float64
DEBUG_COUNTERS = "debug/counters"                      # std_msgs/String (JSON)
DIAGNOSTICS = "/diagnostics"                           # diagnostic_msgs/DiagnosticArray (absolute)

OTHER_TOPICS = {
    "input": INPUT_IMAGE,
    "input_compressed": INPUT_COMPRESSED,
    "input_camera_info": INPUT_CAMERA_INFO,
    "camera_info": OUTPUT_CAMERA_INFO,
    "class_list": CLASS_LIST,
    "processing_time_ms": DEBUG_PROCESSING_TIME,
    "pipeline_latency_ms": DEBUG_PIPELINE_LATENCY,
    "counters": DEBUG_COUNTERS,
}


def private(relative: str) -> str:
    """The name a node uses for its own topic: `~/` + relative."""
    return f"~/{relative}"


def topics(namespace: str = "", node_name: str = NODE_NAME) -> dict[str, str]:
    """Fully qualified topics of a node named `node_name` in `namespace`, keyed by
    image output name and the keys of OTHER_TOPICS."""
    namespace = namespace.strip("/")
    base = f"/{namespace}/{node_name}" if namespace else f"/{node_name}"
    named = {o.name: o.topic for o in IMAGE_OUTPUTS} | OTHER_TOPICS
    return {key: f"{base}/{relative}" for key, relative in named.items()}
