"""The shape of the code base: a ROS-free core without import cycles (lazy imports included)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "magicfuse_core"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, modules: set[str] = frozenset()) -> set[str]:
    """Every module a file imports, at any depth (function-level imports count too); `modules`
    tells sub-modules from names when a line reads `from package import x`."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from .pkg import mod` imports the sub-module mod; `from .pkg import name` needs pkg itself.
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return found


def _core_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path, set(modules)) if m in modules and m != name}
    return graph


def test_core_imports_nothing_from_ros():
    offenders = []
    for path in CORE.rglob("*.py"):
        for module in _imports(path):
            if module.split(".")[0] in {"magicfuse_ros", "rclpy", "rosbags", "sensor_msgs", "std_msgs"}:
                offenders.append(f"{path.relative_to(REPO)} imports {module}")
    assert not offenders, "the core must stay ROS-free:\n" + "\n".join(offenders)


def test_core_has_no_import_cycle():
    graph = _core_graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                # A package __init__ importing its own sub-modules is not a cycle of code.
                cycle = stack[stack.index(nxt):] + [nxt]
                if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(cycle, cycle[1:])):
                    cycles.append(" -> ".join(cycle))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles in magicfuse_core:\n" + "\n".join(cycles)


def test_cycle_check_sees_a_cycle(tmp_path, monkeypatch):
    """The checker itself finds a lazy import that closes a loop (so a green result means something)."""
    pkg = tmp_path / "magicfuse_core"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from .a import g  # lazy\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    monkeypatch.setattr(__import__(__name__), "CORE", pkg)
    with pytest.raises(AssertionError, match="magicfuse_core.a -> magicfuse_core.b -> magicfuse_core.a"):
        test_core_has_no_import_cycle()
