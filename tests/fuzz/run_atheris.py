"""Coverage-guided fuzzing of one target with atheris (libFuzzer), for a bounded time.

    python tests/fuzz/run_atheris.py TARGET [--seconds 20] [--workdir DIR] [--max-len N]
    python tests/fuzz/run_atheris.py TARGET --replay FILE...

TARGET is a key of ``targets.TARGETS`` (imap_framer, imap_parser, pop3, mime, sasl). The seed
corpus (``seeds.py``) is written to ``WORKDIR/corpus`` and grows there as libFuzzer finds new
coverage; a crashing input is written to ``WORKDIR/crash-<sha1>`` and the process exits non-zero
after printing the Python traceback. The postfach package is instrumented for coverage; the
target module and the standard library are not.

Run it in its own process (``tests/reliability/test_fuzz.py`` does): libFuzzer owns the process,
installs signal handlers and exits when done.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["postfach"]):
    import targets

import seeds

#: Longest generated input per target: long enough for every structure the target knows,
#: short enough for many executions per second. Seeds longer than this are cut.
MAX_LEN = {"imap_framer": 1024, "imap_parser": 2048, "pop3": 2048, "mime": 8192, "sasl": 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=sorted(targets.TARGETS))
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--max-len", type=int, default=None)
    parser.add_argument("--replay", type=Path, nargs="+", help="run these inputs once, no fuzzing")
    args, extra = parser.parse_known_args()
    if args.replay:
        for path in args.replay:
            print(f"replay: {path}", flush=True)
            targets.TARGETS[args.target](path.read_bytes())  # a failure raises with its traceback
        print("replay: all inputs pass")
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"fuzz-{args.target}-"))
    corpus = workdir / "corpus"
    count = seeds.write_corpus(args.target, corpus)
    print(f"fuzz: target={args.target} seeds={count} seconds={args.seconds}", flush=True)
    libfuzzer_args = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={args.seconds}",
        f"-max_len={args.max_len or MAX_LEN[args.target]}",
        "-timeout=20",  # one input taking this long is a hang: reported as a crash
        "-rss_limit_mb=3072",
        f"-artifact_prefix={workdir}/",
        "-print_final_stats=1",
        *extra,
    ]
    atheris.Setup(libfuzzer_args, targets.TARGETS[args.target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
