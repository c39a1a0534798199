"""The README's numbers come from committed summaries, not from typing: a paragraph that quotes an
analysis starts with ``<!-- numbers: docs/results/<name>.md -->`` and every decimal number or percentage
in it must appear in that summary, which ``make all`` writes with the hashes of the zoo weights it
describes; a summary older than the bundled weights fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- numbers: (docs/results/[\w.-]+\.md) -->")
NUMBER = re.compile(r"(?<![\w.])\d+\.\d+%?|(?<![\w.])\d+%")


def quoted(readme: str) -> list[tuple[str, str]]:
    """(summary path, paragraph) for every marked paragraph: from the marker to the next blank line."""
    out = []
    for m in MARKER.finditer(readme):
        rest = readme[m.end():]
        end = rest.find("\n\n")
        out.append((m.group(1), rest if end < 0 else rest[:end]))
    return out


def missing_numbers(paragraph: str, summary: str) -> list[str]:
    """Numbers of ``paragraph`` that ``summary`` does not contain."""
    return [n for n in NUMBER.findall(paragraph) if n not in summary]


def test_the_checker_can_fail():
    summary = "faithfulness 0.76 (95% CI 0.68-0.85); accuracy 48.4%"
    assert missing_numbers("kept 0.76 of it (CI 0.68-0.85) at 48.4%", summary) == []
    assert missing_numbers("kept 0.77 of it at 48.5%", summary) == ["0.77", "48.5%"]
    text = "a\n<!-- numbers: docs/results/ioi.md -->\nfirst 0.1\nsecond 0.2\n\nnot 0.3"
    assert quoted(text) == [("docs/results/ioi.md", "\nfirst 0.1\nsecond 0.2")]


def test_every_quoted_number_is_in_its_summary():
    readme = (ROOT / "README.md").read_text()
    marked = quoted(readme)
    assert marked, "the README quotes no committed summary"
    for path, paragraph in marked:
        summary = ROOT / path
        assert summary.is_file(), f"the README quotes {path}, which does not exist: run `make all`"
        missing = missing_numbers(paragraph, summary.read_text())
        assert not missing, f"README numbers {missing} are not in {path}: rerun `make all` and copy them from there"


@pytest.mark.parametrize("summary", sorted((ROOT / "docs" / "results").glob("*.md")), ids=lambda p: p.stem)
def test_each_summary_describes_the_bundled_weights(summary):
    from analyses.all import HASHES
    from circuits.zoo import weights_hash

    line = next((x for x in summary.read_text().splitlines() if x.startswith(HASHES)), None)
    assert line is not None, f"{summary.name} records no model hashes"
    for item in line[len(HASHES):].removesuffix("-->").split():
        spec, digest = item.split("=")
        assert weights_hash(spec.removeprefix("zoo:")) == digest, \
            f"{summary.name} describes other weights of {spec} than the bundled ones: rerun `make all`"
