"""Start a kernel: contain the process first, then import the rest.

Entering a user namespace needs a process with one thread, and importing numpy starts
OpenBLAS's threads; so this module imports only the standard library before the kernel is
contained, and the kernel afterwards.
"""

from __future__ import annotations

import os


def main() -> None:
    from maia_core.execution import isolation

    isolation.die_with_parent(int(os.environ.get("MAIA_PARENT_PID", "0")) or None)
    isolation.make_undumpable()
    containment = "not contained: MAIA_KERNEL_NAMESPACES=0"
    if os.environ.get("MAIA_KERNEL_NAMESPACES", "1") != "0":
        containment = isolation.enter_namespaces()
    from maia_core.execution import kernel

    kernel.main(containment)


if __name__ == "__main__":
    main()
