"""Optional extras (r3hf/_extras.py): a part used without its extra fails at first use, before any
work, naming `pip install 'r3hf[<extra>]'`. tests/torch_only_check.py checks the same in a venv
that really holds torch alone (.ci/steps/30-wheel.sh)."""

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from r3hf import _extras
from r3hf._extras import MissingExtraError, extra_requirements, require

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parent.parent


def test_extras_are_read_from_pyproject():
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not a source checkout")
    declared = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    for extra in ("hf", "trl", "demo"):
        assert len(extra_requirements(extra)) == len(declared[extra])
    assert ("trl", ">=1.13") in extra_requirements("trl")


def test_core_needs_only_torch_and_triton():
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not a source checkout")
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    assert sorted(d.split(">")[0].split(";")[0].strip() for d in deps) == ["torch", "triton"]


def test_unknown_extra_is_an_error():
    with pytest.raises(ValueError, match="no extra named 'nope'"):
        require("nope", "x")


def _fake_versions(monkeypatch, **versions):
    real = metadata.version

    def version(name):
        if name in versions:
            if versions[name] is None:
                raise metadata.PackageNotFoundError(name)
            return versions[name]
        return real(name)

    monkeypatch.setattr(_extras.metadata, "version", version)


def test_missing_package_names_the_extra(monkeypatch):
    _fake_versions(monkeypatch, matplotlib=None)
    with pytest.raises(MissingExtraError, match=r"matplotlib \(not installed\).*pip install 'r3hf\[demo\]'"):
        require("demo", "r3hf demo")
    require("demo", "only transformers", packages=("transformers",))  # a subset that is installed


def test_too_old_package_names_the_extra(monkeypatch):
    _fake_versions(monkeypatch, trl="0.27.0")
    with pytest.raises(MissingExtraError, match=r"trl>=1\.13 \(0\.27\.0 installed\).*pip install 'r3hf\[trl\]'"):
        require("trl", "R3HFGRPOTrainer")


def test_missing_extra_is_an_import_error():
    assert issubclass(MissingExtraError, ImportError)


def test_demo_without_matplotlib_fails_before_any_work(tmp_path):
    """`r3hf demo` with matplotlib missing: exit 1 with the install command, nothing written."""
    code = (
        "import sys\n"
        "from importlib import metadata\n"
        "real = metadata.version\n"
        "def version(name):\n"
        "    if name == 'matplotlib':\n"
        "        raise metadata.PackageNotFoundError(name)\n"
        "    return real(name)\n"
        "metadata.version = version\n"
        "from r3hf.cli import main\n"
        "sys.exit(main(['demo', '--quick', '--out', sys.argv[1]]))\n"
    )
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, (res.stdout, res.stderr[-2000:])
    assert "r3hf demo: r3hf demo needs r3hf's [demo] extra" in res.stderr, res.stderr[-2000:]
    assert "pip install 'r3hf[demo]'" in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()
