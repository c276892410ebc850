"""The node's parameters: declared from, and validated against, one JSON Schema.

`config/magicfuse.param.schema.json` is the only description of the parameters
(type, default, range, meaning). This module turns each schema property into a
ROS parameter declaration with a descriptor (type, description, range, read
only), validates the values the node receives against the same schema, and
raises `ParameterError` naming the first offending parameter. The offline tools
(`magicfuse bag replay`) read the same YAML file through `load_param_file`.

Nothing here needs rclpy except `declare_and_validate`, which imports it lazily.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from .outputs import NODE_NAME

PACKAGE = "magicfuse_ros"
SCHEMA_FILE = "config/magicfuse.param.schema.json"
PARAM_FILE = "config/magicfuse.param.yaml"
# Parameters every rclpy node has, which may come in through the same files.
_ROS_BUILTIN_PARAMETERS = ("use_sim_time", "start_type_description_service")
# Schema entries ROS itself declares (documented in the schema, not declared by us):
# `qos_overrides./<topic>.<publisher|subscription>.<policy>`, read by rclpy when an
# entity is created with qos_overriding_options.
ROS_DECLARED = ("qos_overrides",)


class ParameterError(ValueError):
    """An invalid parameter value; `name` says which parameter."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"invalid parameter '{name}': {problem}")
        self.name = name


def find_share_path(relative: str | Path) -> Path:
    """A data file of the package in the source tree or the installed share folder
    (`magicfuse_core.paths.find_data`); FileNotFoundError when in neither."""
    from magicfuse_core.paths import find_data

    found = find_data(str(relative))
    if found is None:
        raise FileNotFoundError(f"{relative} not found in the source tree nor in the installed share/{PACKAGE} folder")
    return found


@lru_cache(maxsize=1)
def load_file_schema() -> dict:
    """The whole schema of the parameter file (`/**: ros__parameters: {...}`)."""
    return json.loads(find_share_path(SCHEMA_FILE).read_text())


def parameter_schema() -> dict:
    """The schema of the parameter set itself (`definitions.magicfuse`)."""
    return load_file_schema()["definitions"]["magicfuse"]


def node_properties() -> dict[str, dict]:
    """Schema properties of the parameters the node declares itself (all but ROS_DECLARED)."""
    return {name: prop for name, prop in parameter_schema()["properties"].items() if name not in ROS_DECLARED}


def defaults() -> dict[str, Any]:
    """Every declared parameter's default value, from the schema."""
    return {name: prop["default"] for name, prop in node_properties().items()}


@dataclass(frozen=True)
class MagicFuseParams:
    """Validated parameter values (names and meanings: the schema)."""

    model_path: str
    device: str
    backend: str
    cpu_threads: int
    steps: int
    seed_policy: str
    seed: int
    tau: float
    thermal_classes: tuple[str, ...]
    processing_height: int
    processing_width: int
    time_budget_ms: float
    output_encoding: str
    fusion_weight_encoding: str
    subscribe_compressed: bool
    lazy_input: bool
    max_input_age_ms: float
    max_input_pixels: int
    warmup: bool
    publish_debug: bool
    diagnostics_period_s: float
    warn_processing_time_ms: float

    @property
    def processing_size(self) -> tuple[int, int] | None:
        """(height, width) the networks run at, or None for "the model's recorded size, else the input size"."""
        if self.processing_height == 0:
            return None
        return self.processing_height, self.processing_width


def _error_name(error) -> str:
    """The parameter a jsonschema error is about."""
    path = list(error.absolute_path)
    if path:
        return str(path[0])
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return extra[0] if extra else "?"
    if error.validator == "required":
        missing = [n for n in error.validator_value if n not in error.instance]
        return missing[0] if missing else "?"
    return "?"


def validate(values: Mapping[str, Any]) -> MagicFuseParams:
    """Check a complete parameter set against the schema and the cross-field rules.

    Raises ParameterError naming the first offending parameter (unknown names included).
    """
    import jsonschema

    values = dict(values)
    schema = parameter_schema()
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(values), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        error = errors[0]
        name = _error_name(error)
        if error.validator == "additionalProperties":
            raise ParameterError(name, f"unknown parameter (known: {', '.join(schema['properties'])})")
        if error.validator == "required":
            raise ParameterError(name, "missing")
        raise ParameterError(name, f"{error.message} (allowed: {_constraint_text(schema['properties'][name]) or 'see schema'})")
    if (values["processing_height"] == 0) != (values["processing_width"] == 0):
        raise ParameterError(
            "processing_height",
            "processing_height and processing_width must both be 0 (input size) or both be positive, "
            f"got {values['processing_height']} x {values['processing_width']}",
        )
    values["thermal_classes"] = tuple(values["thermal_classes"])
    known = {f.name for f in fields(MagicFuseParams)}
    return MagicFuseParams(**{k: v for k, v in values.items() if k in known})


def load_param_file(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> MagicFuseParams:
    """Read a ROS parameter file (default: the package's), apply overrides, validate.

    Sections `/**`, `magicfuse` and `<namespace>/magicfuse` apply, in file order; other
    nodes' sections are ignored, as ROS would for this node.
    """
    import yaml

    path = Path(path) if path is not None else find_share_path(PARAM_FILE)
    document = yaml.safe_load(Path(path).read_text()) or {}
    values = defaults()
    for node_key, section in document.items():
        if not isinstance(section, dict) or "ros__parameters" not in section:
            raise ValueError(f"{path}: top-level key {node_key!r} has no 'ros__parameters' section")
        if node_key not in ("/**", NODE_NAME) and not str(node_key).endswith(f"/{NODE_NAME}"):
            continue  # another node's section
        for name, value in (section["ros__parameters"] or {}).items():
            if name not in _ROS_BUILTIN_PARAMETERS and name not in ROS_DECLARED:
                values[name] = value
    values.update(overrides or {})
    return validate(values)


# ---- ROS declaration ---------------------------------------------------------------------------

def _constraint_text(prop: Mapping[str, Any]) -> str:
    """Human-readable constraints of a schema property (enum, pattern, range, items)."""
    parts = []
    if "enum" in prop:
        parts.append("one of " + ", ".join(str(v) for v in prop["enum"]))
    if "pattern" in prop:
        parts.append(f"matches {prop['pattern']}")
    if "minimum" in prop or "maximum" in prop:
        parts.append(f"range [{prop.get('minimum', '-inf')}, {prop.get('maximum', 'inf')}]")
    if "minLength" in prop:
        parts.append("not empty")
    items = prop.get("items", {})
    if "enum" in items:
        parts.append("each one of " + ", ".join(items["enum"]))
    if prop.get("minItems"):
        parts.append(f"at least {prop['minItems']} item(s)")
    return "; ".join(parts)


def _ros_type(prop: Mapping[str, Any]):
    from rcl_interfaces.msg import ParameterType

    kind = prop["type"]
    if kind == "array":
        item_kind = prop["items"]["type"]
        return {
            "string": ParameterType.PARAMETER_STRING_ARRAY,
            "integer": ParameterType.PARAMETER_INTEGER_ARRAY,
            "number": ParameterType.PARAMETER_DOUBLE_ARRAY,
            "boolean": ParameterType.PARAMETER_BOOL_ARRAY,
        }[item_kind]
    return {
        "string": ParameterType.PARAMETER_STRING,
        "integer": ParameterType.PARAMETER_INTEGER,
        "number": ParameterType.PARAMETER_DOUBLE,
        "boolean": ParameterType.PARAMETER_BOOL,
    }[kind]


def descriptor(name: str, prop: Mapping[str, Any]):
    """rcl_interfaces/ParameterDescriptor for one schema property (read only: read at start-up)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    desc = ParameterDescriptor(
        name=name,
        type=_ros_type(prop),
        description=prop.get("description", ""),
        additional_constraints=_constraint_text(prop),
        read_only=True,
    )
    if prop["type"] == "integer" and ("minimum" in prop or "maximum" in prop):
        desc.integer_range = [IntegerRange(from_value=int(prop.get("minimum", -(2**63))), to_value=int(prop.get("maximum", 2**63 - 1)), step=0)]
    if prop["type"] == "number" and ("minimum" in prop or "maximum" in prop):
        desc.floating_point_range = [
            FloatingPointRange(from_value=float(prop.get("minimum", -1e308)), to_value=float(prop.get("maximum", 1e308)), step=0.0)
        ]
    return desc


def _type_hint(prop: Mapping[str, Any]) -> str:
    if prop["type"] == "number":
        return "a double (write 1.0, not 1)"
    if prop["type"] == "array":
        return f"a list of {prop['items']['type']}s"
    return f"a {prop['type']}"


def declare_and_validate(node) -> MagicFuseParams:
    """Declare every schema parameter on `node` (with its descriptor and default) and validate.

    Values come from the node's overrides (parameter files, -p arguments). Raises
    ParameterError naming the parameter for a wrong type, an out-of-range value,
    a schema violation, or an override of a parameter the schema does not know.
    """
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    properties = node_properties()
    overrides = getattr(node, "_parameter_overrides", {}) or {}
    unknown = sorted(n for n in overrides if n not in properties and n not in _ROS_BUILTIN_PARAMETERS
                     and not n.startswith(tuple(f"{r}." for r in ROS_DECLARED)))
    if unknown:
        raise ParameterError(unknown[0], f"unknown parameter (known: {', '.join(properties)})")
    values: dict[str, Any] = {}
    for name, prop in properties.items():
        if node.has_parameter(name):  # a managed node configured again after a cleanup
            parameter = node.get_parameter(name)
        else:
            try:
                parameter = node.declare_parameter(name, prop["default"], descriptor(name, prop))
            except InvalidParameterTypeException as exc:
                raise ParameterError(name, f"expected {_type_hint(prop)}: {exc}") from None
            except InvalidParameterValueException as exc:
                raise ParameterError(name, f"{_constraint_text(prop)}: {exc}") from None
        values[name] = list(parameter.value) if prop["type"] == "array" else parameter.value
    return validate(values)
