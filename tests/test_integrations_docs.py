"""The runnable examples of docs/integrations.md (code blocks after a `<!-- runnable -->` line) run."""

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
BLOCKS = re.findall(r"<!-- runnable -->\n```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_there_is_a_runnable_example():
    assert BLOCKS


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_runnable_example(index, capsys, monkeypatch):
    pytest.importorskip("trl.experimental.utils")
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    exec(compile(BLOCKS[index], f"docs/integrations.md[{index}]", "exec"), {"__name__": "__doc_example__"})
    assert "pg_loss" in capsys.readouterr().out
