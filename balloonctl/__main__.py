"""Entry point. Shell completion is answered before typer is imported (see cli/fastcomplete)."""

from __future__ import annotations

import os
import sys


def main() -> None:
    if "_BALLOONCTL_COMPLETE" in os.environ:
        from balloonctl.cli.fastcomplete import complete

        sys.exit(complete())
    from balloonctl.cli.app import run

    run()


if __name__ == "__main__":
    main()
