"""The documentation: the configuration reference matches the models, and no link is broken."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.tools import configdoc

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A Markdown link or image: [text](target) or ![alt](target).
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, as GitHub makes them (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*)$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(page: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text()))
    return [target for target in LINK.findall(text) if not re.match(r"^[a-z]+:", target)]


def test_the_configuration_reference_is_generated_from_the_models() -> None:
    """docs/configuration.md is what the generator makes of the models and reference.toml now."""
    page = configdoc.render(configdoc.REFERENCE.read_text(encoding="utf-8"))
    current = configdoc.OUTPUT.read_text(encoding="utf-8") if configdoc.OUTPUT.exists() else ""
    assert current == page, f"docs/configuration.md is stale: run {configdoc.COMMAND}"


def test_the_reference_names_every_key_with_its_default() -> None:
    """Each key of each table has a row, a secret says how it is supplied and shows no value."""
    page = configdoc.OUTPUT.read_text(encoding="utf-8")
    assert "| `commit_window_ms` | number | `30.0` | > 0, <= 1000 |" in page
    assert '| `policy` | "reject" or "drop_oldest" or "shed" or "compact" | `"reject"` |' in page
    assert "## `[[mqtt.subscriptions]]`" in page
    assert "## `[influx.tls]`" in page
    token = next(line for line in page.splitlines() if line.startswith("| `token` | secret"))
    assert "`token_file`" in token
    assert "`GATEWAY__INFLUX__TOKEN`" in token


def test_a_key_without_words_is_named() -> None:
    """A key that reference.toml does not explain stops the generator, naming the key."""
    reference = configdoc.REFERENCE.read_text(encoding="utf-8")
    bare = re.sub(r"^grace_s = .*$", "grace_s = 10.0", reference, flags=re.MULTILINE)
    assert bare != reference
    with pytest.raises(ValueError, match=r"flush\.grace_s"):
        configdoc.render(bare)


def test_comments_are_read_as_the_file_lays_them_out() -> None:
    """Inline, continued and block comments attach to their key; a '#' in a value is no comment."""
    notes = configdoc.read_notes(
        "[a]\n"
        "# above the key\n"
        'topic = "x/#"   # after it\n'
        "                # and under it\n"
        "\n"
        "# about the table below\n"
        "# [a.b]\n"
        '# path = "/x"   # a commented-out key\n'
    )
    assert notes.keys[("a", "topic")] == ["above the key", "after it", "and under it"]
    assert notes.tables["a.b"] == ["about the table below"]
    assert notes.keys[("a.b", "path")] == ["a commented-out key"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_points_at_a_file_and_an_anchor(page: Path) -> None:
    """Moving a section never leaves a link to a file or a heading that is gone."""
    for target in links(page):
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        assert where.exists(), f"{page.name}: {target} names no file"
        if anchor:
            assert where.suffix == ".md", f"{page.name}: {target}"
            assert anchor in anchors(where), f"{page.name}: {target} names no heading"


def test_the_readme_is_a_landing_page_linking_every_document() -> None:
    """The README keeps the two commands and links each page of docs/."""
    readme = (ROOT / "README.md").read_text()
    assert "scripts/demo " in readme
    assert "scripts/test " in readme
    for page in (ROOT / "docs").glob("*.md"):
        assert f"](docs/{page.name})" in readme, page.name
