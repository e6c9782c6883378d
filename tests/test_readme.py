"""README's quick start quotes the committed default run, not numbers typed by hand."""

import re

from tests.conftest import REPO


def _table_after(text: str, heading: str) -> list[str]:
    lines = text[text.index(heading) + len(heading):].strip().splitlines()
    table = []
    for line in lines:
        if not line.startswith("|"):
            break
        table.append(line)
    return table


def test_readme_headline_is_the_committed_reports():
    readme = (REPO / "README.md").read_text()
    quoted = re.search(r"<!-- headline:.*?-->\n(.*?)<!-- /headline -->", readme, re.S)
    assert quoted, "README.md lost its <!-- headline --> block"
    report = (REPO / "metrics" / "report.md").read_text()
    table = _table_after(report, "## Headline (test, ndcg@10)")
    assert len(table) > 4  # header, rule, popularity, teachers, baseline, methods
    assert quoted.group(1).strip().splitlines() == table, (
        "README.md's headline table differs from metrics/report.md: copy the report's '## Headline' table "
        "between the <!-- headline --> markers after a default `dvc repro`")
