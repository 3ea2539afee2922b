"""The Linux system calls the runtime needs that Python 3.11's :mod:`os` lacks, through ctypes.

Every wrapper raises :class:`OSError` with the errno and the path(s) involved, like :mod:`os`
does, so callers handle failures the same way whichever layer they come from.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os

_libc = ctypes.CDLL(None, use_errno=True)

# clone(2)/unshare(2) flags.
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags.
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MS_PROPAGATION = MS_SHARED | MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE

MNT_DETACH = 2

# prctl(2) options.
PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_CLOSE_RANGE_CLOEXEC = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# glibc has no pivot_root(2) wrapper before 2.36 and none for close_range(2) before 2.34.
# No glibc wrapper at all for mount_setattr(2) (the same number everywhere) and keyctl(2).
_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {"pivot_root": 155, "close_range": 436, "keyctl": 250},
    "aarch64": {"pivot_root": 41, "close_range": 436, "keyctl": 219},
    "riscv64": {"pivot_root": 41, "close_range": 436, "keyctl": 219},
    "ppc64le": {"pivot_root": 203, "close_range": 436, "keyctl": 271},
    "s390x": {"pivot_root": 217, "close_range": 436, "keyctl": 280},
    "armv7l": {"pivot_root": 218, "close_range": 436, "keyctl": 311},
    "i686": {"pivot_root": 217, "close_range": 436, "keyctl": 288},
}
_MOUNT_SETATTR = 442
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
MOUNT_ATTR_NODEV = 0x4
_KEYCTL_JOIN_SESSION_KEYRING = 1


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.socket.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.close.argtypes = [ctypes.c_int]


def _check(result: int, *paths: str | bytes | None) -> None:
    if result < 0:
        err = ctypes.get_errno()
        names = [os.fsdecode(p) for p in paths if p is not None]
        raise OSError(err, os.strerror(err), *names[:1], None, *names[1:2])


def _b(value: str | bytes | os.PathLike[str] | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(
    source: str | bytes | os.PathLike[str] | None,
    target: str | bytes | os.PathLike[str],
    fstype: str | None,
    flags: int = 0,
    data: str | bytes | None = None,
) -> None:
    src, dst = _b(source), _b(target)
    _check(_libc.mount(src, dst, _b(fstype), flags, _b(data)), dst, src)


def umount2(target: str | bytes | os.PathLike[str], flags: int = 0) -> None:
    dst = _b(target)
    _check(_libc.umount2(dst, flags), dst)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags))


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype))


def pivot_root(new_root: str | bytes, put_old: str | bytes) -> None:
    new, old = _b(new_root), _b(put_old)
    if hasattr(_libc, "pivot_root"):
        _check(_libc.pivot_root(new, old), new, old)
    else:
        _check(_libc.syscall(_syscall_number("pivot_root"), new, old), new, old)


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    _check(_libc.prctl(option, arg2, arg3, 0, 0))


def cloexec_from(lowest: int) -> None:
    """Mark every descriptor >= ``lowest`` close-on-exec, so nothing of ours leaks into the
    container whatever the caller left inheritable."""
    try:
        if hasattr(_libc, "close_range"):
            _check(_libc.close_range(lowest, 0xFFFFFFFF, _CLOSE_RANGE_CLOEXEC))
        else:
            number = _syscall_number("close_range")
            _check(_libc.syscall(number, lowest, 0xFFFFFFFF, _CLOSE_RANGE_CLOEXEC))
        return
    except OSError as err:
        if err.errno not in (errno.ENOSYS, errno.EINVAL):
            raise
    # Kernels before 5.11: walk the descriptor table.
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd >= lowest:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability sets (bit masks of capability numbers)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), data))


def bounding_set() -> int:
    """This process's capability bounding set, as a mask: what "all capabilities" can mean
    for a container we start (a sandbox may have dropped some)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapBnd:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return (1 << (last_cap() + 1)) - 1


def last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def set_attr_recursive(path: str | bytes, attr_set: int) -> None:
    """mount_setattr(2) with AT_RECURSIVE: ``attr_set`` (MOUNT_ATTR_*) on the mount at
    ``path`` and every mount below it (Linux 5.12)."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    target = _b(path)
    _check(_libc.syscall(ctypes.c_long(_MOUNT_SETATTR), ctypes.c_int(_AT_FDCWD), target,
                         ctypes.c_uint(_AT_RECURSIVE), ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr))), target)


def join_new_session_keyring() -> None:
    """A new anonymous session keyring: the keys of the session we came from stay out of
    reach (runc does the same for every container process)."""
    _check(_libc.syscall(ctypes.c_long(_syscall_number("keyctl")),
                         ctypes.c_int(_KEYCTL_JOIN_SESSION_KEYRING), ctypes.c_char_p(None)))


def sethostname(name: str) -> None:
    data = name.encode()
    _check(_libc.sethostname(data, len(data)))


class _IfReq(ctypes.Structure):
    # struct ifreq: the interface name, then a union of which only ifr_flags is used here.
    _fields_ = [("name", ctypes.c_char * 16), ("flags", ctypes.c_short),
                ("_pad", ctypes.c_char * 22)]


def interface_up(name: str) -> None:
    """Bring a network interface up (SIOCGIFFLAGS/SIOCSIFFLAGS), as ``ip link set up`` does."""
    af_inet, sock_dgram, sock_cloexec = 2, 2, 0o2000000
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    fd = _libc.socket(af_inet, sock_dgram | sock_cloexec, 0)
    _check(fd)
    try:
        request = _IfReq(name.encode())
        _check(_libc.ioctl(fd, siocgifflags, ctypes.byref(request)))
        request.flags |= iff_up
        _check(_libc.ioctl(fd, siocsifflags, ctypes.byref(request)))
    finally:
        _libc.close(fd)


def _syscall_number(name: str) -> int:
    machine = os.uname().machine
    try:
        return _SYSCALLS[machine][name]
    except KeyError:
        raise OSError(errno.ENOSYS, f"{name}: unknown system call number on {machine}") from None
