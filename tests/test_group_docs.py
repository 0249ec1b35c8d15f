"""The runnable examples of docs/group.md (code blocks after a `<!-- runnable -->` line) run."""

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "group.md"
BLOCKS = re.findall(r"<!-- runnable -->\n```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_there_is_a_runnable_example():
    assert BLOCKS


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_runnable_example(index):
    exec(compile(BLOCKS[index], f"docs/group.md[{index}]", "exec"), {"__name__": "__doc_example__"})
