"""How fast is a shell completion? balloonctl's completion against `python -c pass`.

In one run, interleaved so both see the same machine load: N completions (a subprocess of
the installed ``balloonctl`` console script with the bash completion environment, as the
shell runs it on every Tab) and N runs of ``python -c pass`` with the same interpreter.
Prints the medians and their ratio (target: at most 5x), and, for comparison, what the same
request costs through typer's own completion (typer 0.29 imports pydantic on every call).

    python bench/bench_completion.py [-n 30] [--check]

``--check`` exits 1 when the ratio is over the target.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import compile_bytecode, timed

TARGET_RATIO = 5.0

# The typer path: the same request answered by typer's completion classes.
TYPER_PATH = """
import sys
from typer._completion_classes import completion_init
from balloonctl.cli.app import app
completion_init()
app(prog_name="balloonctl")
"""



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=30, help="runs of each (default 30)")
    parser.add_argument("--check", action="store_true", help="exit 1 over the target ratio")
    parser.add_argument("--typer-runs", type=int, default=5,
                        help="runs of the slow typer path, for comparison (default 5)")
    args = parser.parse_args()

    python = sys.executable
    script = shutil.which("balloonctl", path=str(Path(python).parent)) or shutil.which(
        "balloonctl")
    if script is None:
        print("balloonctl is not installed next to this python", file=sys.stderr)
        return 2

    compile_bytecode()  # as pip install does
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("web-1", "web-2", "db-1"):  # an inventory: completion lists VM names
            Path(tmp, f"{name}.qmp").touch()
        env = {k: v for k, v in os.environ.items() if not k.startswith("_BALLOONCTL")}
        env.update({"BALLOONCTL_DIR": tmp, "BALLOONCTL_WELLKNOWN": "",
                    "BALLOONCTL_CONFIG": str(Path(tmp, "absent.toml"))})
        complete_env = {**env, "_BALLOONCTL_COMPLETE": "complete_bash",
                        "COMP_WORDS": "balloonctl set web-1 ", "COMP_CWORD": "3"}

        check = subprocess.run([script], env=complete_env, capture_output=True, text=True,
                               check=False)
        if "web-2" not in check.stdout.split():
            print(f"completion did not answer as expected: {check.stdout!r} {check.stderr!r}",
                  file=sys.stderr)
            return 2

        timed([python, "-c", "pass"], env)  # warm the page cache for both
        timed([script], complete_env)
        base: list[float] = []
        comp: list[float] = []
        for _ in range(args.n):
            base.append(timed([python, "-c", "pass"], env))
            comp.append(timed([script], complete_env))
        slow = [timed([python, "-c", TYPER_PATH], complete_env) for _ in range(args.typer_runs)]

    b, c, s = statistics.median(base), statistics.median(comp), statistics.median(slow)
    ratio = c / b
    print(f"python -c pass         median {b * 1000:7.1f} ms  (n={args.n})")
    print(f"balloonctl completion  median {c * 1000:7.1f} ms  (n={args.n})  "
          f"ratio {ratio:.2f}x  (target <= {TARGET_RATIO:g}x)")
    print(f"typer's completion     median {s * 1000:7.1f} ms  (n={args.typer_runs})  "
          f"ratio {s / b:.2f}x  (for comparison)")
    if args.check and ratio > TARGET_RATIO:
        print(f"FAIL: completion is {ratio:.2f}x python -c pass (target {TARGET_RATIO:g}x)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
