"""`python -m processor` is the `deepfake-processor` command."""

from __future__ import annotations

from processor.cli import main

raise SystemExit(main())
