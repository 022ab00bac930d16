"""The README's supported-models table, generated from the registry.

    python -m intarsia.supported_models            # print the table
    python -m intarsia.supported_models --write    # refresh it in README.md

An architecture counts as tested when a file in tests/ names it: every
architecture test names the classes it checks against transformers.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from intarsia.engine.registry import registry

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- supported-models:start -->", "<!-- supported-models:end -->"


def tests_naming(name: str, test_dir: Path) -> list[str]:
    pattern = re.compile(rf"\b{re.escape(name)}\b")
    return sorted(f.name for f in test_dir.glob("test_*.py") if pattern.search(f.read_text()))


def table(test_dir: Path = ROOT / "tests") -> str:
    entries = registry()
    canonical = sorted({entry.canonical for entry in entries.values()})
    rows = ["| architecture | task | inputs | also accepted as | tested in |",
            "| --- | --- | --- | --- | --- |"]
    for name in canonical:
        entry = entries[name]
        aliases = sorted(n for n, e in entries.items() if e.canonical == name and n != name)
        inputs = "text + media" if entry.multimodal else "text"
        tested = ", ".join(f"`{t}`" for t in tests_naming(name, test_dir)) or "**not tested**"
        rows.append(f"| `{name}` | {entry.task} | {inputs} | {', '.join(aliases)} | {tested} |")
    return "\n".join(rows)


def refresh_readme(readme: Path = ROOT / "README.md") -> bool:
    """Rewrite the table between the markers; True if it changed."""
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{table()}\n{END}{tail}"
    readme.write_text(new)
    return new != text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--write", action="store_true", help="refresh the table in README.md")
    if parser.parse_args().write:
        print("README.md updated" if refresh_readme() else "README.md already current")
    else:
        print(table())


if __name__ == "__main__":
    main()
