"""Helper processes that never outlive the process that started them.

A DataLoader worker blocked on a full queue does not notice its parent has
gone; when the parent is killed outright (SIGKILL, the out-of-memory
killer), such a worker would live on. :func:`die_with_parent`, called in
each worker as it starts, asks the kernel to kill it with its parent
(Linux ``PR_SET_PDEATHSIG``; elsewhere it does nothing).
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> bool:
    """Have the kernel send SIGKILL to this process when its parent dies; True when set.

    ``parent`` (the pid expected as parent) closes the race of a parent that
    died before the call: the process then exits at once.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent is not None and os.getppid() != parent:
        os._exit(1)
    return True
