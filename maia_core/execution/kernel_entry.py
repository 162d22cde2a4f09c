"""Start a kernel: limits first, then the kernel's imports.

Contained kernels are started by bubblewrap (:mod:`maia_core.execution.containment`), which
has already put the process in its sandbox; ``MAIA_MAX_PROCESSES`` caps its processes
(``RLIMIT_NPROC``, enforced for non-root users; the main process's watcher counts them for
everyone). An uncontained kernel (``--containment none``) dies with the main process and
makes itself undumpable (other processes of the user cannot read its memory), and that is
all.
"""

from __future__ import annotations

import contextlib
import os


def main() -> None:
    from maia_core.execution import isolation

    limit = os.environ.get("MAIA_MAX_PROCESSES")
    if limit:
        import resource

        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NPROC, (int(limit), int(limit)))
    else:  # not in a sandbox: die with the main process, and keep same-user eyes out
        isolation.die_with_parent(int(os.environ.get("MAIA_PARENT_PID", "0")) or None)
        isolation.make_undumpable()
    from maia_core.execution import kernel

    kernel.main()


if __name__ == "__main__":
    main()
