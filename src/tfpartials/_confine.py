"""Self-confinement of a process that is about to open an untrusted model (the child of ``--sandbox``).

Three layers, applied before TensorFlow is imported, each enforced independently:

- Linux Landlock (kernel >= 5.13): read only the listed paths, write only the work directory, execute nothing;
  with ABI >= 4 no TCP ``bind``/``connect``; with ABI >= 6 no abstract unix sockets or signals outside;
- ``RLIMIT_AS`` (the memory limit) and no core dumps;
- a PEP 578 audit hook, which cannot be removed: it refuses network sockets, DNS, processes, and file access
  outside the same paths at the Python level, and records each refusal in :data:`blocked_events` so that the
  command line can name it even when a library swallowed the exception.

Cost: a few system calls at start-up; the audit hook adds a check to each Python-level ``open``.

Reference: Linux ``Documentation/userspace-api/landlock.rst``; PEP 578 (runtime audit hooks).
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["confine", "landlock_abi", "BLOCKED", "blocked_events"]

BLOCKED = "blocked by the tfpartials sandbox"
# refusals of the audit hook in this process, in order (libraries sometimes swallow the exception)
blocked_events: list[str] = []

_SYS_CREATE, _SYS_ADD, _SYS_RESTRICT = 444, 445, 446       # same numbers on every Linux architecture
_PR_SET_NO_NEW_PRIVS = 38
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 14, 1 << 15
_FILE_ONLY = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_SYSTEM_READ = ("/usr", "/lib", "/lib32", "/lib64", "/etc/ld.so.cache", "/etc/localtime", "/proc", "/dev/urandom",
                "/dev/random", "/dev/zero", "/sys/devices/system/cpu", "/sys/fs/cgroup")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers (0: none)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        abi = _libc().syscall(_SYS_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except (OSError, AttributeError):
        return 0
    return max(int(abi), 0)


def _landlock(readable: Sequence[str], writable: Sequence[str]) -> int:
    """Confine this process (and its future threads): read ``readable``, write ``writable``, execute nothing."""
    abi = landlock_abi()
    if abi < 1:
        raise OSError("Landlock is not available")
    fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0) | \
        (_FS_IOCTL_DEV if abi >= 5 else 0)
    net = 0b11 if abi >= 4 else 0           # bind and connect TCP: no rule allows any port
    scoped = 0b11 if abi >= 6 else 0        # abstract unix sockets and signals outside the sandbox
    attr = _RulesetAttr(fs, net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    libc = _libc()
    ruleset = libc.syscall(_SYS_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        rules = [(p, _FS_READ_FILE | _FS_READ_DIR) for p in readable]
        rules += [(p, fs & ~_FS_EXECUTE) for p in writable]
        rules.append(("/dev/null", _FS_READ_FILE | _FS_WRITE_FILE | (_FS_TRUNCATE if abi >= 3 else 0)))
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    access &= _FILE_ONLY
                rule = _PathBeneath(access & fs, fd)
                if libc.syscall(_SYS_ADD, ruleset, 1, ctypes.byref(rule), 0) != 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS) failed")
        if libc.syscall(_SYS_RESTRICT, ruleset, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return abi


def _install_audit_hook(writable: Sequence[str], readable: Sequence[str]) -> None:
    """Refuse, at the Python level, sockets, DNS, processes, writes outside ``writable`` and reads outside
    ``writable + readable`` (an audit hook cannot be removed). Landlock enforces the same file rules in the
    kernel; this layer also names what was refused."""
    import socket

    def forms(paths: Sequence[str]) -> tuple[str, ...]:
        return tuple({os.path.join(f(p), "") for p in paths for f in (os.path.abspath, os.path.realpath)})

    roots = forms(writable)
    read_roots = roots + forms(readable)
    inet = {socket.AF_INET, socket.AF_INET6} | ({socket.AF_PACKET} if hasattr(socket, "AF_PACKET") else set())
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    spawn = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
             "os.startfile", "pty.spawn", "os.kill", "os.killpg")
    net = ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
           "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo", "urllib.Request", "ftplib.connect",
           "http.client.connect", "smtplib.connect")
    paths = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.truncate", "os.chmod",
             "os.chown", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile")
    two_path = ("os.rename", "os.symlink", "os.link", "shutil.move", "shutil.copyfile")   # (source, destination)

    def inside(path: Any, allowed: tuple[str, ...] = roots) -> bool:
        if isinstance(path, int):
            return True
        try:
            full = os.path.abspath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return full == os.devnull or full.startswith(allowed) or os.path.join(full, "") in allowed

    def refuse(what: str) -> None:
        message = f"{BLOCKED}: {what}"
        blocked_events.append(message)
        raise PermissionError(message)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None))[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (mode is None and isinstance(flags, int) and flags & write_flags)
            if writes and not inside(path):
                refuse(f"the model tried to write {os.fsdecode(path)!r}, outside the sandbox")
            if not writes and not inside(path, read_roots):
                refuse(f"the model tried to read {os.fsdecode(path)!r}, outside the model and its data")
        elif event == "socket.__new__":
            if len(args) > 1 and args[1] in inet:
                refuse("the model tried to open a network socket")
        elif event.startswith(net):
            refuse(f"the model tried to use the network ({event})")
        elif event.startswith(spawn):
            refuse(f"the model tried to start or signal a process ({event})")
        elif event.startswith(paths):
            target = args[1] if event.startswith(two_path) and len(args) > 1 else (args[0] if args else None)
            if isinstance(target, str | bytes | os.PathLike) and not inside(target):
                refuse(f"the model tried to change {os.fsdecode(target)!r}, outside the sandbox ({event})")

    sys.addaudithook(hook)


def _system_readable() -> list[str]:
    import tfpartials

    found = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix) if p}
    found |= {os.path.realpath(p) for p in sys.path if p and os.path.exists(p)}
    found.add(os.path.dirname(os.path.realpath(tfpartials.__file__)))
    found |= {p for p in _SYSTEM_READ if os.path.exists(p)}
    found.add(os.path.realpath(os.path.dirname(sys.executable)))
    return sorted(found)


def confine(workdir: str, readable: Sequence[str], memory: int) -> int:
    """Confine the current process: memory, Landlock files/network, Python audit hook. Returns the Landlock ABI."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = memory if hard == resource.RLIM_INFINITY else min(memory, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    writable = [os.path.realpath(workdir)]
    reads = _system_readable() + [os.path.realpath(p) for p in readable]
    abi = _landlock(reads, writable)
    _install_audit_hook(writable, reads + list(readable))
    return abi
