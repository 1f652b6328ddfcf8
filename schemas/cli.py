"""`deepfake-processor schemas export DIR`: write the wire schemas as JSON Schema files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _cmd_export(args: argparse.Namespace) -> int:
    from schemas.export import export_schemas

    for path in export_schemas(Path(args.directory)):
        sys.stdout.write(f"{path}\n")
    return 0


def register(sub: Any) -> None:
    """Add the `schemas` command to the top-level subparsers."""
    parser = sub.add_parser("schemas", help="JSON Schemas of the input event, the result and the dead letter")
    actions = parser.add_subparsers(dest="schemas_command", required=True)
    export = actions.add_parser("export", help="write *.schema.json files into DIR")
    export.add_argument("directory", metavar="DIR", help="output directory (created if missing)")
    export.set_defaults(handler=_cmd_export)
