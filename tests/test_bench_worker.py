"""The benchmarks' worker processes report their own peak memory, not their parent's."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from _worker import run_worker  # noqa: E402


def test_a_worker_reports_its_own_peak_rss_not_its_parents(tmp_path):
    """On Linux a child started by subprocess inherits its parent's peak in ``ru_maxrss``: a worker started after
    the parent had touched 400 MiB must still report only what it used itself."""
    script = tmp_path / "w.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(BENCH)!r})\n"
        "from _worker import peak_rss_mib, report\n"
        "if __name__ == '__main__':\n"
        "    block = bytearray(100 * 2**20)\n"
        "    block[::4096] = b'x' * len(block[::4096])  # touch 100 MiB\n"
        "    report({'peak': peak_rss_mib()})\n"
    )
    ballast = bytearray(400 * 2**20)
    ballast[::4096] = b"x" * len(ballast[::4096])
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 >= 400  # the parent's peak is high
    peak = run_worker(script, {}, tmp_path)["peak"]
    del ballast
    assert 100 <= peak < 300
