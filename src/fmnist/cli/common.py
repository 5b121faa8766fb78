"""What every entry point shares: user errors as one line with exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from fmnist.errors import UserError

T = TypeVar("T")


def report_user_errors(prog: str, body: Callable[[], T]) -> T:
    """Run body; a UserError becomes `prog: error: ...` on stderr and exit code 2 (no traceback)."""
    try:
        return body()
    except UserError as exc:
        logging.shutdown()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
