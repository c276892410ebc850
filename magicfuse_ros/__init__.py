"""ROS 2 node `magicfuse` over the ROS-free `magicfuse_core` pipeline, plus rosbag2 tools.

Modules: `outputs` (the table of the node's topics), `params` (declaration and
validation from config/magicfuse.param.schema.json), `conversions` (Image,
CompressedImage, CameraInfo <-> numpy), `processing` (model loading and one frame
through the pipeline, shared by the node and the bag replay), `monitoring`
(counters, timing, diagnostics), `fusion_worker` (slot, worker, frame function and
topics, shared by both nodes), `node` (console script `magicfuse_node`),
`managed_node` (lifecycle node, `magicfuse_managed_node`), `bag` (rosbag2
make/replay with `rosbags`), `node_process` (the node as a subprocess and an rclpy
client), `live_replay` (a bag through the real node), `cli` (`magicfuse bag`, the
demo step). Importing the package imports neither rclpy nor torch.
"""
