"""Start the magicfuse node: `ros2 launch magicfuse_ros fuse.launch.py input_topic:=/camera/image_raw`.

Arguments (ros2 launch magicfuse_ros fuse.launch.py --show-args):
  input_topic   camera topic (sensor_msgs/Image), remapped to the node's ~/input/image;
                its /compressed sibling is remapped to ~/input/image/compressed and the
                camera_info beside it (<input_topic parent>/camera_info) to ~/input/camera_info
  param_file    parameter file (default: the package's config/magicfuse.param.yaml)
  namespace     namespace of the node (outputs become /NAMESPACE/magicfuse/output/...)
  device        torch device (auto | cpu | cuda | cuda:N), overrides the parameter file
  use_sim_time  true when replaying bags with --clock
  managed       true: the lifecycle node (magicfuse_managed_node), which starts unconfigured
                and is driven through ~/change_state (configure, activate, ...), e.g. by a
                lifecycle manager or `ros2 lifecycle set /magicfuse configure`
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    input_topic = LaunchConfiguration("input_topic")
    managed = LaunchConfiguration("managed")
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
        DeclareLaunchArgument("managed", default_value="false", choices=["true", "false"],
                              description="start the managed (lifecycle) node instead of the plain one"),
    ]
    # Same name, parameters and topics for both executables.
    common = dict(
        package="magicfuse_ros",
        name="magicfuse",
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("param_file"),
            {"device": LaunchConfiguration("device"), "use_sim_time": LaunchConfiguration("use_sim_time")},
        ],
        remappings=[
            ("~/input/image", input_topic),
            ("~/input/image/compressed", [input_topic, "/compressed"]),
            # /camera/image_raw -> /camera/camera_info, as image_transport pairs them
            ("~/input/camera_info",
             PythonExpression(["'/'.join('", input_topic, "'.split('/')[:-1] + ['camera_info'])"])),
        ],
        output="screen",
        emulate_tty=True,
    )
    plain = Node(executable="magicfuse_node", condition=UnlessCondition(managed), **common)
    lifecycle = LifecycleNode(executable="magicfuse_managed_node", condition=IfCondition(managed), **common)
    return LaunchDescription([*arguments, plain, lifecycle])
