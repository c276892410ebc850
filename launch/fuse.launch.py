"""Start the magicfuse node: `ros2 launch magicfuse_ros fuse.launch.py input_topic:=/camera/image_raw`.

Arguments (ros2 launch magicfuse_ros fuse.launch.py --show-args):
  input_topic   camera topic (sensor_msgs/Image), remapped to the node's ~/input/image;
                its /compressed sibling is remapped to ~/input/image/compressed
  param_file    parameter file (default: the package's config/magicfuse.param.yaml)
  namespace     namespace of the node (outputs become /NAMESPACE/magicfuse/output/...)
  device        torch device (auto | cpu | cuda | cuda:N), overrides the parameter file
  use_sim_time  true when replaying bags with --clock
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    input_topic = LaunchConfiguration("input_topic")
    arguments = [
        DeclareLaunchArgument("input_topic", default_value="/camera/image_raw",
                              description="camera topic (sensor_msgs/Image) fed to ~/input/image"),
        DeclareLaunchArgument("param_file",
                              default_value=PathJoinSubstitution([FindPackageShare("magicfuse_ros"), "config",
                                                                  "magicfuse.param.yaml"]),
                              description="node parameter file"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="torch device: auto | cpu | cuda | cuda:N (overrides the parameter file)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
    ]
    node = Node(
        package="magicfuse_ros",
        executable="magicfuse_node",
        name="magicfuse",
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("param_file"),
            {"device": LaunchConfiguration("device"), "use_sim_time": LaunchConfiguration("use_sim_time")},
        ],
        remappings=[
            ("~/input/image", input_topic),
            ("~/input/image/compressed", [input_topic, "/compressed"]),
        ],
        output="screen",
        emulate_tty=True,
    )
    return LaunchDescription([*arguments, node])
