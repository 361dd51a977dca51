"""Coverage-guided fuzzing (atheris) of the hostile-input surfaces, bounded in time.

Each target of ``tests/fuzz/targets.py`` runs in its own child process (libFuzzer takes over a
process: signal handlers, exit) for ``POSTFACH_FUZZ_SECONDS`` seconds (default 20; five targets,
under two minutes in all), starting from the seed corpus of ``tests/fuzz/seeds.py``. A crash or
a broken invariant fails the test and shows the traceback and the crashing input. The figures of
the run (executions, seconds, corpus growth) are printed, so ``pytest -s`` shows them.

Reproduce one target by hand::

    .venv/bin/python tests/fuzz/run_atheris.py mime --seconds 60 --workdir /tmp/fuzz-mime
    .venv/bin/python tests/fuzz/run_atheris.py mime --replay /tmp/fuzz-mime/crash-...
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

atheris = pytest.importorskip(
    "atheris", reason="atheris is in the dev extra (pip install -e .[dev])"
)

RUNNER = Path(__file__).resolve().parents[1] / "fuzz" / "run_atheris.py"
SECONDS = int(os.environ.get("POSTFACH_FUZZ_SECONDS", "20"))
TARGETS = ["imap_framer", "imap_parser", "pop3", "mime", "sasl"]

pytestmark = pytest.mark.timeout(SECONDS + 90)


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target(target: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(RUNNER),
            target,
            "--seconds",
            str(SECONDS),
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        timeout=SECONDS + 80,
    )
    output = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    crashes = sorted(tmp_path.glob("crash-*")) + sorted(tmp_path.glob("timeout-*"))
    crashes += sorted(tmp_path.glob("oom-*"))
    if proc.returncode != 0 or crashes:
        shown = "\n".join(f"{c.name}: {c.read_bytes()[:2000]!r}" for c in crashes)
        tail = "\n".join(output.splitlines()[-60:])
        pytest.fail(
            f"fuzz target {target} failed (exit {proc.returncode})\n{tail}\n"
            f"crashing input(s):\n{shown or '(none written)'}",
            pytrace=False,
        )
    runs = re.search(r"Done (\d+) runs in (\d+) second", output)
    assert runs is not None, output[-3000:]
    executions, seconds = int(runs.group(1)), int(runs.group(2))
    corpus = len(list((tmp_path / "corpus").iterdir()))
    print(f"fuzz {target}: {executions} executions in {seconds} s, corpus {corpus} inputs")
    # The run did real work: a target that fails to start or hangs on one input would not.
    assert executions >= 100, output[-3000:]
