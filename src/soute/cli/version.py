"""soute version."""

from __future__ import annotations

import argparse
import platform
import sys
from typing import Any


def configure_version(parser: argparse.ArgumentParser) -> None:
    pass


def run_version(ctx: Any, args: argparse.Namespace) -> int:
    from soute import __version__

    print(f"soute version {__version__}")
    print(f"python {platform.python_version()} ({sys.implementation.name})")
    print(f"platform {platform.system().lower()}/{platform.machine()}")
    print(f"store {ctx.root}")
    return 0
