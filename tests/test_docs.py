"""The runnable examples of README.rst and docs/*.rst run against the real servers.

Convention: a ``.. code-block:: python`` block runs here when the reST comment
``.. runnable`` comes right before it (blank lines between them are fine)::

    .. runnable

    .. code-block:: python

        view = await repo.app_config(user_id, "theme")

A runnable block is the body of an ``async`` function, as in ``python -m asyncio``:
it may ``await`` at top level. Its namespace holds two names, and nothing else:

- ``engine``: the session's SQLAlchemy ``AsyncEngine`` (``tests/conftest.py``), on
  the library's schema, with the tables emptied before each block;
- ``valkey_url``: the URL of the test Valkey, flushed before each block.

Each block runs on its own (blocks share no names), imports what it uses, closes
the clients it opens, and fails the test by raising (``assert``). A block that is
not marked is documentation only: a sketch with placeholders, or one that needs a
Sentinel, a cluster or a TLS server. A ``.. runnable`` comment that is not followed
by a Python code block fails the suite, so a typo cannot silently skip an example.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import CodeType
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]

MARKER = re.compile(r"^(?P<indent>[ \t]*)\.\. runnable[ \t]*$")
PYTHON_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. code-block:: python[ \t]*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the code-block directive
    source: str

    @property
    def id(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}"


class MarkerError(Exception):
    """A ``.. runnable`` comment with no Python code block after it."""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def extract(path: Path) -> list[Block]:
    """The runnable blocks of one reST file, in order (at any indentation)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if not MARKER.match(lines[i]):
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        directive = PYTHON_BLOCK.match(lines[j]) if j < len(lines) else None
        if directive is None:
            raise MarkerError(f"{path}:{i + 1}: '.. runnable' is not followed by a python block")
        start, level = j, _indent(lines[j])
        j += 1
        # The block's options, then its body: every line indented deeper than the
        # directive, or blank.
        while j < len(lines) and _indent(lines[j]) > level and lines[j].strip().startswith(":"):
            j += 1
        body: list[str] = []
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > level):
            body.append(lines[j])
            j += 1
        source = textwrap.dedent("\n".join(body)).strip("\n")
        if not source:
            raise MarkerError(f"{path}:{start + 1}: the runnable block is empty")
        blocks.append(Block(path, start + 1, source + "\n"))
        i = j
    return blocks


def all_blocks() -> list[Block]:
    return [block for path in SOURCES if path.exists() for block in extract(path)]


def compile_block(block: Block) -> CodeType:
    return compile(
        block.source,
        block.id,
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        dont_inherit=True,
    )


BLOCKS = all_blocks()


async def run_block(block: Block, namespace: dict[str, Any]) -> None:
    result = eval(compile_block(block), namespace)  # our own docs, nothing from outside
    if result is not None:  # a coroutine when the block awaits at top level
        await result


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
async def test_runnable_block(block: Block, engine: AsyncEngine, valkey_url: str) -> None:
    namespace = {"__name__": "__doc_example__", "engine": engine, "valkey_url": valkey_url}
    await run_block(block, namespace)


# -- the harness itself ------------------------------------------------------------------


def test_the_deployment_guide_has_runnable_examples() -> None:
    assert any(block.path.name == "deployment.rst" for block in BLOCKS)


def test_every_runnable_block_compiles() -> None:
    for block in BLOCKS:
        compile_block(block)  # a SyntaxError names the file and line


def _doc(tmp_path: Path, text: str) -> Path:
    """A ``doc.rst`` holding ``text``."""
    doc = tmp_path / "doc.rst"
    doc.write_text(text, encoding="utf-8")
    return doc


def test_extract_finds_marked_blocks_only(tmp_path: Path) -> None:
    doc = _doc(
        tmp_path,
        "Title\n=====\n\n"
        ".. code-block:: python\n\n    not_marked()\n\n"
        ".. runnable\n\n"
        ".. code-block:: python\n   :caption: options are skipped\n\n"
        "    x = 1\n\n    assert x == 1\n\n"
        "After the block.\n",
    )
    (block,) = extract(doc)
    assert block.source == "x = 1\n\nassert x == 1\n"
    assert block.line == 10


def test_extract_finds_indented_blocks(tmp_path: Path) -> None:
    doc = _doc(
        tmp_path,
        "Term\n    A definition.\n\n    .. runnable\n\n    .. code-block:: python\n\n"
        "        y = 2\n\n    Back in the definition.\n",
    )
    (block,) = extract(doc)
    assert block.source == "y = 2\n"


def test_a_marker_without_a_python_block_is_an_error(tmp_path: Path) -> None:
    doc = _doc(tmp_path, ".. runnable\n\n.. code-block:: text\n\n    hello\n")
    with pytest.raises(MarkerError):
        extract(doc)


async def test_a_failing_block_fails(tmp_path: Path) -> None:
    doc = _doc(
        tmp_path,
        ".. runnable\n\n.. code-block:: python\n\n"
        "    import asyncio\n\n    await asyncio.sleep(0)\n    assert engine == 'e'\n",
    )
    (block,) = extract(doc)
    await run_block(block, {"engine": "e"})
    with pytest.raises(AssertionError):
        await run_block(block, {"engine": "other"})
