"""ROS 2 node `magicfuse` over the ROS-free `magicfuse_core` pipeline, plus rosbag2 tools.

Modules: `node` (the node, console script `magicfuse_node`), `params` (declaration and
validation from config/magicfuse.param.schema.json), `conversions` (Image and
CompressedImage <-> numpy), `processing` (one frame through the pipeline, shared by the
node and the bag replay), `bag` (rosbag2 make/replay with `rosbags`), `live_replay`
(the real node driven through rclpy). Importing the package imports neither rclpy nor torch.
"""
