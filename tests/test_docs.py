"""docs/METHOD.md is the method document the code cites: every cited section exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTION = re.compile(r"§(\d+(?:\.\d+)?)(?:\s*[–-]\s*§?(\d+(?:\.\d+)?))?")


def _sections() -> set[str]:
    """Numbers of the headings (``## 4.``, ``### 4.2``) and of the numbered quirks of §8."""
    text = (REPO / "docs" / "METHOD.md").read_text()
    found = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, flags=re.M))
    quirks = text.split("\n## 8.", 1)[1].split("\n## 9.", 1)[0]
    found |= {f"8.{n}" for n in re.findall(r"^(\d+)\. \*\*", quirks, flags=re.M)}
    return found


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True).stdout.split()
    paths = [REPO / p for p in listed] if listed else list(REPO.glob("**/*.py"))
    return [p for p in paths if p.suffix in {".py", ".md", ".yaml", ".ipynb", ".toml"} and p.is_file()
            and p.name not in {"METHOD.md", "CONTRIBUTING.md", Path(__file__).name}]


def test_every_cited_method_section_exists() -> None:
    sections = _sections()
    assert {"1", "2.4", "4.3", "4.4", "6", "8.5", "8.16", "9.2"} <= sections
    missing = []
    for path in _tracked_text_files():
        in_library = path.relative_to(REPO).parts[0] in {"distilvpr_lib", "tests"}
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if "§" not in line or not (in_library or "METHOD.md" in line):
                continue
            for first, last in SECTION.findall(line):
                missing += [f"{path.relative_to(REPO)}:{number}: §{s}" for s in (first, last) if s and s not in sections]
    assert not missing, "sections cited but not in docs/METHOD.md:\n" + "\n".join(missing)
    assert "METHOD.md" not in re.sub(r"docs/METHOD\.md|spec/METHOD\.md", "", "\n".join(
        p.read_text(errors="replace") for p in _tracked_text_files() if p.suffix == ".py")), \
        "a module cites METHOD.md without its folder (docs/METHOD.md)"
