"""One ament_python package, ``magicfuse_ros``, that also installs the ROS-free
``magicfuse_core`` library, so that both ``colcon build`` in a ROS 2 workspace and
``pip install -e .`` in a virtualenv work from this one file."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "magicfuse_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["magicfuse_core", "magicfuse_core.*", "magicfuse_ros", "magicfuse_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.json")),
        (f"share/{PACKAGE}/models/demo", glob("models/demo/*")),
        (f"share/{PACKAGE}/samples/msrs", glob("samples/msrs/*.md") + glob("samples/msrs/*.csv")),
        (f"share/{PACKAGE}/samples/msrs/vis", glob("samples/msrs/vis/*.png")),
        (f"share/{PACKAGE}/samples/msrs/ir", glob("samples/msrs/ir/*.png")),
        (f"share/{PACKAGE}/samples/msrs/det", glob("samples/msrs/det/*.txt")),
    ],
    # Runtime needs of the core. rclpy and the message packages come from the ROS
    # install (package.xml) or, in our virtualenv, from requirements-ros.txt.
    install_requires=[
        "torch>=2.1",
        "numpy",
        "safetensors",
        "Pillow",
        "opencv-python-headless",
        "tqdm",
        "PyYAML",
        "jsonschema",
        "rosbags",
        # backend "auto" runs ONNX Runtime on CPUs (without it: eager torch, said once at start-up)
        "onnx",
        "onnxruntime",
    ],
    extras_require={"report": ["matplotlib"]},
    zip_safe=True,
    maintainer="MagicFuse ROS developers",
    maintainer_email="magicfuse-ros@example.org",
    description="MagicFuse single-image visible/thermal fusion: core library and ROS 2 node",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "magicfuse = magicfuse_core.cli:main",
            "magicfuse_node = magicfuse_ros.node:main",
            "magicfuse_managed_node = magicfuse_ros.managed_node:main",
        ],
        # The ROS-free core finds the ROS sub-command and demo step here (it never imports magicfuse_ros).
        "magicfuse.commands": ["bag = magicfuse_ros.cli"],
        "magicfuse.demo_steps": ["ros = magicfuse_ros.cli:demo_step"],
    },
)
