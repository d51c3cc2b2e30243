"""A process that cannot write a file: the kernel refuses it (Linux seccomp), whatever it runs.

`longforge catalog query` runs a user's SQL, and DuckDB's own sandbox cannot make it read-only: the
folders a query may read (``allowed_directories``) are folders it may also write, so ``COPY ... TO``
or ``EXPLAIN ANALYZE COPY`` into a dataset's folder would overwrite its files. So the query runs in
a child process that, before it opens anything, installs a seccomp filter: every ``open`` that
asks to write, create, truncate or append fails with EPERM, and so do the calls that rename,
delete, link, truncate or change the mode of a path. The filter holds for the process and every
thread it starts, and cannot be removed (``no_new_privs``). Reads, and writes to the pipes it
already holds (its answer), still work.

Where the filter cannot be installed (not Linux, another CPU, a kernel without seccomp) nothing
is pretended: :func:`forbid_writes` raises, and the caller falls back to a query that may read no
file at all.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys

# <linux/audit.h>, <linux/seccomp.h>, <linux/filter.h>, <linux/prctl.h>
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_RET_KILL_PROCESS = 0x80000000
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JSET_K = 0x45
_BPF_JGE_K = 0x35
_X32_SYSCALL_BIT = 0x40000000
_BPF_RET_K = 0x06

# open(2) flags that write: O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND (and O_TMPFILE, which
# needs O_WRONLY or O_RDWR). The same values on x86_64 and aarch64.
_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000

# Syscall numbers: calls that open with flags (syscall -> index of the flags argument), and calls
# that change the file system whatever their arguments.
_OPENS = {
    "x86_64": {2: 1, 257: 2},  # open(path, flags), openat(dirfd, path, flags)
    "aarch64": {56: 2},  # openat
}
_CHANGES = {
    # creat, openat2 (flags in a struct: refused, libc falls back to openat), truncate, ftruncate,
    # rename, renameat, renameat2, mkdir, mkdirat, rmdir, link, linkat, unlink, unlinkat, symlink,
    # symlinkat, chmod, fchmod, fchmodat, chown, fchown, lchown, fchownat, mknod, mknodat,
    # utime, utimes, utimensat, futimesat, fallocate, io_uring_setup, open_by_handle_at, fchmodat2
    "x86_64": (85, 437, 76, 77, 82, 264, 316, 83, 258, 84, 86, 265, 87, 263, 88, 266, 90, 91, 268, 92, 93, 94,
               260, 133, 259, 132, 235, 280, 261, 285, 425, 304, 452),
    # truncate, ftruncate, renameat, renameat2, mkdirat, linkat, unlinkat, symlinkat, fchmod,
    # fchmodat, fchownat, fchown, mknodat, utimensat, fallocate, openat2, io_uring_setup,
    # open_by_handle_at, fchmodat2
    "aarch64": (45, 46, 38, 276, 34, 37, 35, 36, 52, 53, 54, 55, 33, 88, 47, 437, 425, 265, 452),
}


class WritesNotForbidden(RuntimeError):
    """This machine cannot forbid a process its writes (no seccomp filter for this CPU or kernel)."""


def _filter(arch: str) -> list[tuple[int, int, int, int]]:
    """The BPF program: (code, jump-if-true, jump-if-false, k) instructions."""
    deny = _SECCOMP_RET_ERRNO | errno.EPERM
    prog = [(_BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
            (_BPF_JEQ_K, 1, 0, _AUDIT_ARCH[arch]),
            (_BPF_RET_K, 0, 0, _SECCOMP_RET_KILL_PROCESS),  # another ABI (32-bit calls): never
            (_BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
            (_BPF_JGE_K, 0, 1, _X32_SYSCALL_BIT),  # x32 calls carry x86_64's arch with this bit set: never
            (_BPF_RET_K, 0, 0, _SECCOMP_RET_KILL_PROCESS)]
    for nr in _CHANGES[arch]:
        prog += [(_BPF_JEQ_K, 0, 1, nr), (_BPF_RET_K, 0, 0, deny)]
    for nr, arg in _OPENS[arch].items():
        # seccomp_data.args[arg], its low 32 bits (little-endian): offset 16 + 8 * arg
        prog += [(_BPF_JEQ_K, 0, 4, nr),
                 (_BPF_LD_W_ABS, 0, 0, 16 + 8 * arg),
                 (_BPF_JSET_K, 0, 1, _WRITE_FLAGS),
                 (_BPF_RET_K, 0, 0, deny),
                 (_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW)]
    prog.append((_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    return prog


def forbid_writes() -> None:
    """From now on this process (and every thread it starts) cannot open a file to write it, nor
    create, delete, rename, link or truncate one. Irreversible. Call it before starting threads."""
    arch = platform.machine()
    if not sys.platform.startswith("linux") or arch not in _AUDIT_ARCH:
        raise WritesNotForbidden(f"no write filter for {sys.platform}/{arch} (Linux x86_64 or aarch64 only)")
    prog = _filter(arch)
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise WritesNotForbidden(f"prctl(NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise WritesNotForbidden(f"seccomp filter refused: {os.strerror(ctypes.get_errno())}")
