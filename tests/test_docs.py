"""The docs keep to the code: the ```python blocks of README.md and docs/*.md run as
written, and docs/reliability.md cites only tests that exist.

Each file's blocks run in order, as one script in a fresh interpreter whose working
directory is a temporary one, so a block may use what an earlier block of the same page
defined, and relative paths such as "data.lmdb" land in the temporary directory.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


PAGES_WITH_CODE = [page for page in PAGES if python_blocks(page)]


def test_the_pages_with_code_are_found():
    names = {page.name for page in PAGES_WITH_CODE}
    assert {"README.md", "usage.md", "processes.md", "migrating.md"} <= names


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda page: page.name)
def test_the_code_blocks_of_a_page_run(page, tmp_path):
    blocks = python_blocks(page)
    script = tmp_path / f"{page.stem}_blocks.py"
    script.write_text("\n\n".join(blocks), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (
        f"{page.relative_to(ROOT)}: its python blocks failed (exit {done.returncode})\n"
        f"{done.stdout}\n{done.stderr}"
    )


CITATION = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?|`::(\w+)")


def cited_tests(text: str) -> list[tuple[str, str | None]]:
    """(file, test name or None) for every test docs/reliability.md cites.

    A citation is `tests/file.py::name`, or `::name` for another test of the
    file cited just before it.
    """
    cited, current = [], None
    for match in CITATION.finditer(text):
        if match.group(1):
            current = match.group(1)
            cited.append((current, match.group(2)))
        elif current is not None:
            cited.append((current, match.group(3)))
    return cited


def test_reliability_cites_only_tests_that_exist():
    cited = cited_tests((ROOT / "docs" / "reliability.md").read_text(encoding="utf-8"))
    assert len(cited) > 50
    missing = []
    for file, name in cited:
        path = ROOT / file
        if not path.exists():
            missing.append(file)
        elif name and not re.search(rf"^\s*(def|class) {name}\b", path.read_text(), re.M):
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/reliability.md cites tests that do not exist: {missing}"
