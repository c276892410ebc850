"""launch/fuse.launch.py and the packaging it relies on.

`launch` and `launch_ros` are not installable in the virtualenv, so the launch file
is loaded with minimal stand-ins for the few classes it uses, injected into
sys.modules for this test only; substitutions are then resolved the way launch
would, and what the node would be started with is checked against the package's
installed files (setup.py data_files, entry points) and package.xml.
"""
from __future__ import annotations

import importlib.util
import os
import runpy
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from magicfuse_ros import params

REPO = Path(__file__).resolve().parents[2]
LAUNCH_FILE = REPO / "launch" / "fuse.launch.py"
SHARE = "/opt/ros/kilted/share/magicfuse_ros"  # where FindPackageShare would point


class LaunchConfiguration:
    def __init__(self, name, default=None):
        self.name = name


class PathJoinSubstitution:
    def __init__(self, parts):
        self.parts = list(parts)


class FindPackageShare:
    def __init__(self, package):
        self.package = package


class DeclareLaunchArgument:
    def __init__(self, name, default_value=None, description="", **kwargs):
        self.name, self.default_value, self.description, self.kwargs = name, default_value, description, kwargs


class PythonExpression:
    def __init__(self, parts):
        self.parts = list(parts)


class IfCondition:
    def __init__(self, predicate):
        self.predicate = predicate

    def holds(self, arguments) -> bool:
        return resolve(self.predicate, arguments).lower() in ("true", "1")


class UnlessCondition(IfCondition):
    def holds(self, arguments) -> bool:
        return not super().holds(arguments)


class LaunchDescription:
    def __init__(self, entities=()):
        self.entities = list(entities)


class Node:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class LifecycleNode(Node):
    def __init__(self, *, name, namespace, **kwargs):  # launch_ros requires both, by keyword
        super().__init__(name=name, namespace=namespace, **kwargs)


def resolve(value, arguments: dict):
    """Evaluate a stand-in substitution (or a list of them) the way launch would."""
    if isinstance(value, LaunchConfiguration):
        return arguments[value.name]
    if isinstance(value, FindPackageShare):
        assert value.package == "magicfuse_ros"
        return SHARE
    if isinstance(value, PathJoinSubstitution):
        return os.path.join(*(resolve(p, arguments) for p in value.parts))
    if isinstance(value, PythonExpression):
        return str(eval("".join(resolve(p, arguments) for p in value.parts)))  # as launch does
    if isinstance(value, (list, tuple)):
        return "".join(resolve(p, arguments) for p in value)
    return value


@pytest.fixture
def launch_description(monkeypatch):
    modules = {
        "launch": types.ModuleType("launch"),
        "launch.actions": types.ModuleType("launch.actions"),
        "launch.conditions": types.ModuleType("launch.conditions"),
        "launch.substitutions": types.ModuleType("launch.substitutions"),
        "launch_ros": types.ModuleType("launch_ros"),
        "launch_ros.actions": types.ModuleType("launch_ros.actions"),
        "launch_ros.substitutions": types.ModuleType("launch_ros.substitutions"),
    }
    modules["launch"].LaunchDescription = LaunchDescription
    modules["launch.actions"].DeclareLaunchArgument = DeclareLaunchArgument
    modules["launch.substitutions"].LaunchConfiguration = LaunchConfiguration
    modules["launch.substitutions"].PathJoinSubstitution = PathJoinSubstitution
    modules["launch.substitutions"].PythonExpression = PythonExpression
    modules["launch.conditions"].IfCondition = IfCondition
    modules["launch.conditions"].UnlessCondition = UnlessCondition
    modules["launch_ros.actions"].LifecycleNode = LifecycleNode
    modules["launch_ros.actions"].Node = Node
    modules["launch_ros.substitutions"].FindPackageShare = FindPackageShare
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("fuse_launch_under_test", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def arguments_and_node(description, **given):
    """Declared arguments, their values (defaults + given), and the one node started with those values."""
    declared = [e for e in description.entities if isinstance(e, DeclareLaunchArgument)]
    values = {a.name: resolve(a.default_value, {}) for a in declared}
    values.update(given)
    nodes = [e for e in description.entities if isinstance(e, Node)
             and (e.kwargs.get("condition") is None or e.kwargs["condition"].holds(values))]
    assert len(nodes) == 1
    return declared, values, nodes[0].kwargs


@pytest.fixture(scope="module")
def setup_kwargs():
    """setup()'s arguments, captured by running setup.py with a stand-in setup()."""
    import setuptools

    captured = {}
    cwd = os.getcwd()
    original = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        os.chdir(REPO)
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = original
        os.chdir(cwd)
    return captured


def test_launch_arguments(launch_description):
    declared, values, _ = arguments_and_node(launch_description)
    assert [a.name for a in declared] == ["input_topic", "param_file", "namespace", "device", "use_sim_time", "managed"]
    assert all(a.description for a in declared)
    assert values["input_topic"] == "/camera/image_raw"
    assert values["namespace"] == ""
    assert values["use_sim_time"] == "false"
    assert values["device"] == params.defaults()["device"]
    assert values["managed"] == "false"


@pytest.mark.parametrize("managed,executable,kind", [("false", "magicfuse_node", Node),
                                                     ("true", "magicfuse_managed_node", LifecycleNode)])
def test_managed_argument_picks_the_lifecycle_node_with_the_same_identity(launch_description, setup_kwargs, managed,
                                                                           executable, kind):
    declared, values, node = arguments_and_node(launch_description, managed=managed)
    assert [a.kwargs.get("choices") for a in declared if a.name == "managed"] == [["true", "false"]]
    started = [e for e in launch_description.entities if isinstance(e, Node) and e.kwargs["condition"].holds(values)]
    assert type(started[0]) is kind
    assert (node["package"], node["executable"], node["name"]) == ("magicfuse_ros", executable, "magicfuse")
    assert f"{executable} = magicfuse_ros.{'managed_node' if managed == 'true' else 'node'}:main" in \
        setup_kwargs["entry_points"]["console_scripts"]
    # Same parameters and topics whichever node runs.
    other = next(e for e in launch_description.entities if isinstance(e, Node) and e is not started[0])
    assert {k: v for k, v in other.kwargs.items() if k not in ("executable", "condition")} == \
        {k: v for k, v in node.items() if k not in ("executable", "condition")}


def test_node_identity_matches_the_console_script(launch_description, setup_kwargs):
    _, _, node = arguments_and_node(launch_description)
    assert (node["package"], node["executable"], node["name"]) == ("magicfuse_ros", "magicfuse_node", "magicfuse")
    scripts = setup_kwargs["entry_points"]["console_scripts"]
    assert "magicfuse_node = magicfuse_ros.node:main" in scripts
    from magicfuse_ros import node as node_module

    assert node_module.NODE_NAME == "magicfuse" and callable(node_module.main)


def test_input_topic_is_remapped_to_the_private_input(launch_description):
    _, values, node = arguments_and_node(launch_description, input_topic="/cam_front/image")
    remaps = {resolve(a, values): resolve(b, values) for a, b in node["remappings"]}
    assert remaps == {"~/input/image": "/cam_front/image", "~/input/image/compressed": "/cam_front/image/compressed",
                      "~/input/camera_info": "/cam_front/camera_info"}
    _, values, node = arguments_and_node(launch_description, input_topic="image_raw")  # relative, no parent
    remaps = {resolve(a, values): resolve(b, values) for a, b in node["remappings"]}
    assert remaps["~/input/camera_info"] == "camera_info"


def test_namespace_argument_sets_the_node_namespace(launch_description):
    _, values, node = arguments_and_node(launch_description, namespace="front")
    assert resolve(node["namespace"], values) == "front"


def test_param_file_default_is_the_installed_config(launch_description, setup_kwargs):
    _, values, node = arguments_and_node(launch_description)
    path = resolve(node["parameters"][0], values)
    assert path == f"{SHARE}/config/magicfuse.param.yaml"
    # The file the default points at is installed there by setup.py ...
    installed = {dest: files for dest, files in setup_kwargs["data_files"]}
    assert "config/magicfuse.param.yaml" in installed["share/magicfuse_ros/config"]
    assert "config/magicfuse.param.schema.json" in installed["share/magicfuse_ros/config"]
    # ... and a user-given file replaces it.
    _, values, node = arguments_and_node(launch_description, param_file="/tmp/mine.yaml")
    assert resolve(node["parameters"][0], values) == "/tmp/mine.yaml"


def test_launch_parameter_overrides_are_known_parameters(launch_description):
    _, values, node = arguments_and_node(launch_description, device="cuda:1", use_sim_time="true")
    overrides = {k: resolve(v, values) for k, v in node["parameters"][1].items()}
    assert overrides == {"device": "cuda:1", "use_sim_time": "true"}
    schema_props = params.parameter_schema()["properties"]
    assert all(k in schema_props or k == "use_sim_time" for k in overrides)


def test_setup_installs_launch_and_config_into_share(setup_kwargs):
    installed = {dest: files for dest, files in setup_kwargs["data_files"]}
    assert "launch/fuse.launch.py" in installed["share/magicfuse_ros/launch"]
    assert "resource/magicfuse_ros" in installed["share/ament_index/resource_index/packages"]
    assert "package.xml" in installed["share/magicfuse_ros"]
    assert {"magicfuse_ros"} <= set(setup_kwargs["packages"])


def test_package_xml_declares_the_runtime_dependencies():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.findtext("name") == "magicfuse_ros"
    depends = {e.text for e in root if e.tag in ("depend", "exec_depend")}
    for key in ("rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "lifecycle_msgs", "builtin_interfaces", "launch",
                "launch_ros",
                "ament_index_python", "python3-numpy", "python3-opencv", "python3-yaml", "python3-jsonschema"):
        assert key in depends, key
    assert root.find("export/build_type").text == "ament_python"


def test_the_ros_package_imports_no_training_code():
    """The node's whole import graph (node, bag tools, pipeline, backends) stays clear of training."""
    import subprocess

    code = ("import sys, magicfuse_ros.node, magicfuse_ros.managed_node, magicfuse_ros.bag, magicfuse_ros.live_replay, magicfuse_core.pipeline, "
            "magicfuse_core.backends; print('\\n'.join(sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    modules = result.stdout.split()
    assert "magicfuse_core.pipeline" in modules
    training = [m for m in modules if m.split(".")[0] == "training"
                or m in ("magicfuse_core.losses", "magicfuse_core.data", "magicfuse_core.degrade")]
    assert not training, training
