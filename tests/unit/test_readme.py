"""The README's settings table is generated from the Settings class; this fails when they drift."""

from __future__ import annotations

import re
from pathlib import Path

from processor.settings import settings_table

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def readme_settings_block() -> str:
    text = README.read_text()
    match = re.search(re.escape(START) + r"\n(.*?)" + re.escape(END), text, re.S)
    assert match, "README.md lost its settings-table markers"
    return match.group(1)


def test_readme_settings_table_matches_settings_class() -> None:
    expected = settings_table()
    assert readme_settings_block() == expected, (
        "README settings table is stale; regenerate with:\n"
        "python -c 'import tests.unit.test_readme as t; t.write_readme_table()'"
    )


def test_readme_quick_start_has_exactly_the_two_commands_and_ci_runs_the_test_one() -> None:
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quick, re.S)
    assert len(commands) == 2
    assert "deepfake-processor demo" in commands[0]
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci


def write_readme_table() -> None:
    text = README.read_text()
    block = START + "\n" + settings_table() + END
    README.write_text(re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S))
