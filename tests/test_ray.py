"""Scale-out on Ray, tested where Ray can reach nothing but this machine: the cases of tests/ray_cases.py and
tests/ray_async_cases.py (asynchronous rollouts) run in a fresh user + network namespace whose only interface is the
loopback (``unshare -rn``), so the Ray instance they start listens on 127.0.0.1 alone (one pytest process there runs
them all, on one Ray instance per file; each case here reports one of them). And the single-process path imports
nothing from Ray."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]


# the cases, read from the files (a case added there is run and reported here without more ado)
FILES = ("tests/ray_cases.py", "tests/ray_async_cases.py")
CASES = [
    node.name
    for path in FILES
    for node in ast.parse((ROOT / path).read_text()).body
    if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
]


@pytest.fixture(scope="module")
def loopback_cases(tmp_path_factory) -> dict[str, str | None]:
    """Every case of the FILES, run once in one loopback-only namespace (so one Ray instance serves them
    all): ``{case: None if it passed, else what pytest said about it}``."""
    report = tmp_path_factory.mktemp("ray") / "cases.xml"
    inner = (
        f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider --junitxml={report} "
        + " ".join(FILES)
    )
    out = subprocess.run(["unshare", "-rn", "sh", "-c", inner], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert report.is_file(), (out.stdout + out.stderr)[-4000:]
    outcomes: dict[str, str | None] = {}
    for case in ElementTree.parse(report).iter("testcase"):
        problems = [el for el in case if el.tag in ("failure", "error", "skipped")]
        said = "\n".join(f"{el.tag}: {el.get('message', '')}\n{el.text or ''}" for el in problems)
        outcomes[case.get("name", "")] = said[-4000:] or None
    assert sorted(outcomes) == sorted(CASES), (out.stdout + out.stderr)[-4000:]  # every case is one of ours, run
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_ray_rollout_workers(case, loopback_cases):
    assert loopback_cases[case] is None, loopback_cases[case]


def test_the_single_process_path_imports_nothing_from_ray(tmp_path, write_config):
    cfg = write_config()
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom aha.cli import app\n"
        f"r = CliRunner().invoke(app, ['train', {str(cfg)!r}, '-o', {str(tmp_path / 'run')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
