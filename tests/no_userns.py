"""Run a command where user namespaces cannot be created, as in a container that forbids
them: a seccomp filter refuses ``unshare`` and ``clone`` with ``CLONE_NEWUSER`` (and
``clone3``, whose flags a filter cannot read, so libc falls back to ``clone``).

Usage: python no_userns.py COMMAND [ARGS...]
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys

CLONE_NEWUSER = 0x10000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7


def SCMP_ACT_ERRNO(code: int) -> int:
    return 0x00050000 | code


class ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def main() -> None:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ArgCmp),
    ]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    newuser = (ArgCmp * 1)(ArgCmp(0, SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER))
    for name in ("unshare", "clone"):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        assert lib.seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(errno.EPERM), nr, 1, newuser) == 0
    nr = lib.seccomp_syscall_resolve_name(b"clone3")
    if nr >= 0:
        assert lib.seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(errno.ENOSYS), nr, 0, None) == 0
    assert lib.seccomp_load(ctx) == 0
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
