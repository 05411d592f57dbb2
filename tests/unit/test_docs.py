"""The documentation keeps up with the code: every command and option of `filedge` has --help
text and appears in docs/, every pipeline key appears in the pipeline file's reference, and every
document in docs/ is linked from the README."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from filedge_core.cli import main
from filedge_core.config import ColumnSpec, ConnectorSpec, CsvOptions, PipelineConfig

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PIPELINE_REFERENCE = (DOCS / "run-a-pipeline.md").read_text()
COMMANDS = sorted(main.commands.items())


def section(command: str) -> str:
    """The text under the heading that names `filedge <command>`, up to the next heading of the
    same or a higher level ("" if there is none)."""
    for path in sorted(DOCS.glob("*.md")):
        lines = path.read_text().splitlines()
        # A "# comment" inside a fenced code block is not a heading.
        fenced, in_code = False, []
        for line in lines:
            if line.startswith("```"):
                fenced = not fenced
            in_code.append(fenced)
        for i, line in enumerate(lines):
            heading = None if in_code[i] else re.match(r"^(#+) ", line)
            # A heading about the command: nothing but `filedge <command> [args]` after the #s.
            if heading and re.fullmatch(rf"`filedge {command}( [^`]*)?`\s*", line[heading.end():]):
                level = len(heading.group(1))
                end = next(
                    (j for j in range(i + 1, len(lines))
                     if not in_code[j] and (m := re.match(r"^(#+) ", lines[j])) and len(m.group(1)) <= level),
                    len(lines),
                )
                return "\n".join(lines[i:end])
    return ""


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option)]


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_command_has_help_and_is_documented(name: str, command: click.Command) -> None:
    assert (command.help or "").strip(), f"filedge {name} has no --help text"
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0 and f"{name} [OPTIONS]" in result.output, result.output
    assert section(name), f"docs/ has no section headed `filedge {name}`"


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_option_has_help_and_is_documented(name: str, command: click.Command) -> None:
    for option in _options(command):
        if option.hidden or option.name == "help":
            continue
        flags = [flag for flag in option.opts if flag.startswith("--")]
        assert (option.help or "").strip(), f"filedge {name} {flags[0]} has no --help text"
        assert any(flag in section(name) for flag in flags), f"{flags[0]} is not in the docs' `filedge {name}` section"


def _keys(model: type[BaseModel], prefix: str) -> list[str]:
    return [prefix + name for name in model.model_fields]


def test_every_pipeline_key_is_in_the_reference() -> None:
    keys = [k for k in _keys(PipelineConfig, "") if k not in ("connector", "columns", "csv", "after_commit")]
    keys += _keys(ConnectorSpec, "connector.") + _keys(CsvOptions, "csv.") + _keys(ColumnSpec, "columns[].")
    keys += ["columns", "after_commit"]
    table_keys = set(re.findall(r"^\| `([^`]+)`", PIPELINE_REFERENCE, re.MULTILINE))
    table_keys |= {k.strip("` ") for row in re.findall(r"^\| (`[^|]+`) \|", PIPELINE_REFERENCE, re.MULTILINE)
                   for k in row.split(",")}
    missing = [k for k in keys if k not in table_keys]
    assert not missing, f"pipeline keys missing from docs/run-a-pipeline.md's table: {missing}"


def test_every_document_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if f"(docs/{p.name})" not in readme]
    assert not unlinked, f"docs not linked from README.md: {unlinked}"
