"""`python -m jmed.reaper -- CMD…`: run CMD in this process's group and take the whole group down when
the process that started us goes away, however it went (exit, Ctrl-C, SIGTERM, or SIGKILL, which no
handler in the parent can see).

vLLM's server starts an EngineCore process of its own; a parent killed with SIGKILL would leave both
running with gigabytes of KV cache. The starter runs us with `start_new_session=True`, so CMD and
everything it starts share our process group; we watch our parent and, when it is gone (our parent
pid changes to 1 or a subreaper), SIGKILL the group, ourselves included. Stdlib only, no jmed import:
it runs before anything heavy and must not fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.2


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print("usage: python -m jmed.reaper -- COMMAND [ARGS…]", file=sys.stderr)
        return 2
    cmd = argv[argv.index("--") + 1 :]
    parent = os.getppid()
    child = subprocess.Popen(cmd)

    def down(*_):
        # the whole group: CMD, the processes it started, and this reaper
        os.killpg(os.getpgrp(), signal.SIGKILL)

    signal.signal(signal.SIGTERM, lambda *_: _terminate(child, down))
    signal.signal(signal.SIGINT, lambda *_: _terminate(child, down))
    while True:
        code = child.poll()
        if code is not None:
            return code
        if os.getppid() != parent:
            down()
        time.sleep(POLL_S)


def _terminate(child, down, grace: float = 10.0) -> None:
    """SIGTERM: let CMD shut down (vLLM stops its engine core), then take the group down regardless."""
    child.terminate()
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    down()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
