"""How fast does ``balloonctl status VM --json`` start and answer? As a whole process, against
``python -c pass``.

The bench starts one fake VM in its own process (``balloonctl fake``), then, interleaved so
both see the same machine load, N runs of the installed ``balloonctl`` console script asking
for that VM's status as JSON and N runs of ``python -c pass`` with the same interpreter.
Prints the medians and their ratio (target: at most 8x), and, for comparison, the same
command with typer's own pydantic-based parameter coercion (what every call paid before
``balloonctl.cli.params``) and the same command with no bytecode cache at all (every
module, the standard library's too, compiled from source at each start). The bytecode is
written first, as ``pip install`` does.

    python bench/bench_status.py [-n 20] [--check]

``--check`` exits 1 when the ratio is over the target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import compile_bytecode, no_bytecode_env, timed

TARGET_RATIO = 8.0

# The same command with typer's own coercion (pydantic TypeAdapters) left in place.
TYPER_COERCION = """
import sys
import balloonctl.cli.params as params
params.tune = lambda *a, **k: None
from balloonctl.cli.app import run
sys.argv = ["balloonctl", *sys.argv[1:]]
run()
"""



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20, help="runs of each (default 20)")
    parser.add_argument("--check", action="store_true", help="exit 1 over the target ratio")
    parser.add_argument("--typer-runs", type=int, default=5,
                        help="runs with typer's own coercion, and with no bytecode cache, "
                             "for comparison (default 5)")
    args = parser.parse_args()

    python = sys.executable
    script = shutil.which("balloonctl", path=str(Path(python).parent)) or shutil.which(
        "balloonctl")
    if script is None:
        print("balloonctl is not installed next to this python", file=sys.stderr)
        return 2

    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="bst-", dir="/tmp") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("_BALLOONCTL")}
        env.update({"BALLOONCTL_DIR": tmp, "BALLOONCTL_WELLKNOWN": "",
                    "BALLOONCTL_CONFIG": str(Path(tmp, "absent.toml")),
                    "BALLOONCTL_STATE": str(Path(tmp, "state.json"))})
        fake = subprocess.Popen([script, "fake", "--vms", "1", "--dir", tmp], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert fake.stdout is not None
            ready = fake.stdout.readline()  # "vm1 qmp=... qga=...": the VM is serving
            if not ready.startswith("vm1 "):
                print(f"the fake VM did not start: {ready!r}", file=sys.stderr)
                return 2
            status = [script, "status", "vm1", "--json"]
            check = subprocess.run(status, env=env, capture_output=True, text=True,
                                   check=False)
            if check.returncode != 0 or json.loads(check.stdout)[0]["name"] != "vm1":
                print(f"status did not answer as expected: {check.stdout!r} {check.stderr!r}",
                      file=sys.stderr)
                return 2

            timed([python, "-c", "pass"], env)  # warm the page cache for both
            timed(status, env)
            base: list[float] = []
            runs: list[float] = []
            for _ in range(args.n):
                base.append(timed([python, "-c", "pass"], env))
                runs.append(timed(status, env))
            slow = [timed([python, "-c", TYPER_COERCION, *status[1:]], env)
                    for _ in range(args.typer_runs)]
            cold_env = no_bytecode_env(env, str(Path(tmp, "no-pycache")))
            cold = [timed(status, cold_env) for _ in range(args.typer_runs)]
        finally:
            fake.terminate()
            fake.wait(timeout=10)

    b, r, s = statistics.median(base), statistics.median(runs), statistics.median(slow)
    c = statistics.median(cold)
    ratio = r / b
    print(f"python -c pass                 median {b * 1000:7.1f} ms  (n={args.n})")
    print(f"balloonctl status vm1 --json   median {r * 1000:7.1f} ms  (n={args.n})  "
          f"ratio {ratio:.2f}x  (target <= {TARGET_RATIO:g}x)")
    print(f"  with typer's own coercion    median {s * 1000:7.1f} ms  (n={args.typer_runs})  "
          f"ratio {s / b:.2f}x  (for comparison)")
    print(f"  with no bytecode cache (all) median {c * 1000:7.1f} ms  (n={args.typer_runs})  "
          f"ratio {c / b:.2f}x  (for comparison)")
    if args.check and ratio > TARGET_RATIO:
        print(f"FAIL: status is {ratio:.2f}x python -c pass (target {TARGET_RATIO:g}x)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
