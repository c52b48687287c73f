"""The docs site's file includes point at real files and survive the formatter."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_INCLUDE = re.compile(r'^--8<-- "([^"]+)"$')


def test_snippet_includes_are_well_formed_and_resolve() -> None:
    # `ruff format` rewrites python code blocks in markdown: it once turned the quickstart's
    # include into `--8 < --"..."`, so the page showed that line instead of the example.
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if "--8" not in line:
                continue
            where = f"{page.relative_to(ROOT)}:{number}"
            match = _INCLUDE.match(line.strip())
            assert match, f"{where}: malformed snippet include {line!r}"
            assert (ROOT / match.group(1)).is_file(), f"{where}: {match.group(1)} does not exist"
