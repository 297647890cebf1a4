"""The README documents what the code does: every command's flags, every config field, its docs.

Each command's section in README.md has one fenced block whose info string is
`synopsis` and whose first line starts with `dream-hpo COMMAND`. The flags that block
documents are the `--long-flags` on its lines before any `#` (what follows `#` is a
description and may mention other flags). These tests compare them with the argparse
parser the `dream-hpo` command is built from, so a flag added to the parser and not to
the README, or documented but gone from the parser, fails here by command and flag.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from search.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 360

SYNOPSIS = re.compile(r"^```synopsis\n(.*?)^```", re.MULTILINE | re.DOTALL)
LONG_FLAG = re.compile(r"(?<![\w-])--[A-Za-z0-9][A-Za-z0-9-]*")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def readme() -> str:
    return README.read_text(encoding="utf-8")


def parser_flags() -> dict[str, set[str]]:
    """{command: its long flags}, from the subparsers of `search.cli.build_parser()`, --help left out."""
    parser = build_parser()
    [subparsers] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return {
        command: {
            option
            for action in subparser._actions
            for option in action.option_strings
            if option.startswith("--") and option != "--help"
        }
        for command, subparser in subparsers.choices.items()
    }


def synopsis_blocks(text: str) -> dict[str, list[str]]:
    """{command: [its synopsis blocks]}, keyed by the word after `dream-hpo` on each block's first line."""
    blocks: dict[str, list[str]] = {}
    for block in SYNOPSIS.findall(text):
        words = block.split()
        assert words[:1] == ["dream-hpo"] and len(words) > 1, (
            f"a ```synopsis block must start with `dream-hpo COMMAND`; this one starts with {block.splitlines()[0]!r}"
        )
        blocks.setdefault(words[1], []).append(block)
    return blocks


def documented_flags(block: str) -> set[str]:
    return {flag for line in block.splitlines() for flag in LONG_FLAG.findall(line.split("#", 1)[0])}


def test_readme_has_one_synopsis_per_command_and_no_other():
    commands = set(parser_flags())
    blocks = synopsis_blocks(readme())
    missing = sorted(commands - set(blocks))
    unknown = sorted(set(blocks) - commands)
    repeated = sorted(command for command, found in blocks.items() if len(found) > 1)
    assert not missing, f"README.md has no ```synopsis block for command(s) {missing}"
    assert not unknown, f"README.md has ```synopsis blocks for {unknown}, which `dream-hpo` does not have"
    assert not repeated, f"README.md has more than one ```synopsis block for {repeated}"


@pytest.mark.parametrize("command", sorted(parser_flags()))
def test_readme_synopsis_lists_exactly_the_parsers_flags(command):
    blocks = synopsis_blocks(readme()).get(command)
    assert blocks, f"README.md has no ```synopsis block for `dream-hpo {command}`"
    in_parser, in_readme = parser_flags()[command], documented_flags(blocks[0])
    undocumented = sorted(in_parser - in_readme)
    nonexistent = sorted(in_readme - in_parser)
    problems = []
    if undocumented:
        problems.append(f"`dream-hpo {command}` has flag(s) {undocumented} that its README synopsis does not list")
    if nonexistent:
        problems.append(f"the README synopsis of `dream-hpo {command}` lists {nonexistent}, which the parser does not have")
    assert not problems, "; ".join(problems)


def test_documented_flags_reads_flags_before_the_comment_only():
    block = "dream-hpo search\n  [--max-epochs N] [--quick]   # with --quick: 3, see --set\n"
    assert documented_flags(block) == {"--max-epochs", "--quick"}


def test_readme_lists_every_config_field_once():
    from model.config import InputConfig, LegNetConfig, ModelConfig, TrainConfig

    text = readme()
    start = text.index("### Config fields")
    section = text[start : text.index("\n#", start + 1)]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    listed = [name for row in rows for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])]
    fields = {*ModelConfig.fields(), *LegNetConfig.fields(), *InputConfig.fields(), *TrainConfig.fields()}
    assert not sorted(fields - set(listed)), f"README.md's Config fields table misses {sorted(fields - set(listed))}"
    assert not sorted(set(listed) - fields), f"README.md's Config fields table lists {sorted(set(listed) - fields)}, not config fields"
    assert len(listed) == len(set(listed)), f"README.md's Config fields table lists a field twice: {listed}"


def test_readme_is_at_most_360_lines():
    lines = len(readme().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; keep it at most {MAX_README_LINES} and move detail to docs/"


def relative_links(path: Path) -> list[str]:
    return [target for target in LINK.findall(path.read_text(encoding="utf-8")) if "://" not in target and not target.startswith("#")]


def test_every_readme_link_into_docs_names_an_existing_file():
    links = [target.split("#", 1)[0] for target in relative_links(README) if target.startswith("docs/")]
    assert links, "README.md links to nothing under docs/"
    broken = sorted({link for link in links if not (ROOT / link).is_file()})
    assert not broken, f"README.md links to {broken}, which do not exist"


def test_every_docs_page_is_linked_from_the_readme_and_its_links_resolve():
    linked = {target.split("#", 1)[0] for target in relative_links(README)}
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in linked, f"docs/{page.name} is not linked from README.md"
        broken = sorted({t for t in relative_links(page) if not (page.parent / t.split("#", 1)[0]).exists()})
        assert not broken, f"docs/{page.name} links to {broken}, which do not exist"
