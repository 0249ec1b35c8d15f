"""The GRPO example of docs/integrations.md (the code block after `<!-- runnable: grpo -->`) runs,
and the installed TRL is one R3HFGRPOTrainer supports (pyproject leaves `trl` unpinned)."""

import os
import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
BLOCKS = re.findall(r"<!-- runnable: grpo -->\n```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_installed_trl_is_supported():
    trl = pytest.importorskip("trl")
    from r3hf.integrations.trl.grpo import SUPPORTED_TRL, trl_supported

    assert trl_supported(trl.__version__), f"TRL {trl.__version__} is outside {SUPPORTED_TRL}"
    expected = os.environ.get("R3HF_EXPECT_TRL")  # set by .ci/steps/45-trl-versions.sh
    assert expected is None or trl.__version__ == expected, f"TRL {trl.__version__} ran, {expected} was meant"
    assert trl_supported("1.13.0") and trl_supported("1.16.3")
    assert not trl_supported("1.12.0") and not trl_supported("1.17.0")


def test_there_is_a_grpo_example():
    assert len(BLOCKS) == 1


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_grpo_example_runs(capsys):
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    exec(compile(BLOCKS[0], "docs/integrations.md[grpo]", "exec"), {"__name__": "__doc_example__"})
    out = capsys.readouterr().out
    assert "r3hf/dense_reward/pos_0" in out and "rewards/tiny-rm/mean" in out
