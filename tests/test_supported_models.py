"""The README's supported-models table is current and every architecture has a test."""

from intarsia.supported_models import ROOT, START, table


def test_readme_table_is_current():
    readme = (ROOT / "README.md").read_text()
    assert f"{START}\n{table()}\n" in readme, "run: python -m intarsia.supported_models --write"


def test_every_architecture_is_tested():
    untested = [line.split("`")[1] for line in table().splitlines() if "**not tested**" in line]
    assert not untested, f"architectures without a consistency test: {untested}"
