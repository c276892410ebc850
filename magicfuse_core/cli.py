"""`magicfuse` command line: one entry point, one module per sub-command.

Each sub-command lives in its own module exposing `register(subparsers)`, which
adds its parser and sets `func` to a callable taking the parsed args and
returning an exit code. Modules are imported only when listed here, so a
sub-command's heavy imports cost nothing to the others.

Other installed packages add sub-commands through the entry-point group
`magicfuse.commands` (a module with `register`): the ROS package adds `bag`
that way, so this ROS-free core never imports it.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import entry_points

# (module, ...) in the order shown by --help.
COMMAND_MODULES = (
    "magicfuse_core.commands.fuse",
    "magicfuse_core.commands.convert",
    "magicfuse_core.commands.demo",
    "magicfuse_core.commands.eval",
    "magicfuse_core.commands.bench",
    "magicfuse_core.commands.export",
)


COMMAND_GROUP = "magicfuse.commands"


def plugin_modules() -> list[str]:
    """Sub-command modules registered by other installed packages (entry-point group COMMAND_GROUP)."""
    return [ep.value for ep in sorted(entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magicfuse", description="MagicFuse single-image visible/thermal fusion")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in (*COMMAND_MODULES, *plugin_modules()):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not written yet in this checkout
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        # User-facing errors (missing files, bad checkpoints, bad options) end with
        # one clear line instead of a traceback.
        print(f"magicfuse {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
