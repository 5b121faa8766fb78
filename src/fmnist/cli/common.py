"""What every entry point shares: user errors as one line with exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from fmnist.errors import UserError

T = TypeVar("T")


def report_user_errors(prog: str, body: Callable[[], T], on_error: Callable[[str], None] | None = None) -> T:
    """Run body; a UserError becomes `prog: error: ...` on stderr and exit code 2 (no traceback).

    on_error, if given, sees the message first (training records it in the run's metrics.json).
    """
    try:
        return body()
    except UserError as exc:
        if on_error is not None:
            on_error(str(exc))
        logging.shutdown()
        code = getattr(exc, "exit_code", 2)
        print(f"{prog}: {'error: ' if code == 2 else ''}{exc}", file=sys.stderr)
        sys.exit(code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
