"""Dropping root once the rings and sockets are open (`-Z USER`, as tcpdump -Z)."""

from __future__ import annotations

import ctypes
import os
import pwd
import stat
from dataclasses import dataclass

from capture_backend.contract import UserError

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(UserError, PermissionError):
    """An unknown user, or a drop the system refused."""


@dataclass(frozen=True)
class RunAs:
    """The user to run as after the capture is open."""

    name: str
    uid: int
    gid: int


def lookup_user(name: str) -> RunAs:
    """The user `name` (or a numeric uid) from the password database; PrivilegeError if there is none."""
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, OverflowError):
        raise PrivilegeError(f"-Z {name!r}: no such user") from None
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)


def writable_by(path: str, user: RunAs) -> bool:
    """Whether `user` (with no supplementary groups, as after the drop) may create files in directory `path`."""
    if user.uid == 0:
        return True
    st = os.stat(path)
    if st.st_uid == user.uid:
        need = stat.S_IWUSR | stat.S_IXUSR
    elif st.st_gid == user.gid:
        need = stat.S_IWGRP | stat.S_IXGRP
    else:
        need = stat.S_IWOTH | stat.S_IXOTH
    return st.st_mode & need == need


def unreadable_by(path: str, user: RunAs) -> str | None:
    """The first directory from / down to `path` that `user` may not enter and list, or None."""
    if user.uid == 0:
        return None
    parts = os.path.realpath(path).split(os.sep)
    for depth in range(1, len(parts) + 1):
        here = os.sep + os.path.join(*parts[1:depth]) if depth > 1 else os.sep
        st = os.stat(here)
        if st.st_uid == user.uid:
            need = stat.S_IRUSR | stat.S_IXUSR
        elif st.st_gid == user.gid:
            need = stat.S_IRGRP | stat.S_IXGRP
        else:
            need = stat.S_IROTH | stat.S_IXOTH
        if st.st_mode & need != need:
            return here
    return None


def _clear_capabilities() -> None:
    """Empty the effective, permitted and inheritable capability sets (and with them the ambient set)."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    if libc.capset(header, data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"-Z: cannot drop capabilities: {os.strerror(err)}")


def drop_privileges(user: RunAs) -> None:
    """Become `user` for good: no supplementary groups, its gid and uid (real, effective, saved), no capabilities."""
    try:
        if os.getuid() != user.uid or os.geteuid() != user.uid:
            os.setgroups([])
            os.setresgid(user.gid, user.gid, user.gid)
            os.setresuid(user.uid, user.uid, user.uid)
        elif os.getgid() != user.gid:
            os.setresgid(user.gid, user.gid, user.gid)
    except PermissionError:
        raise PrivilegeError(
            f"-Z {user.name}: cannot change to user {user.name} (needs root or CAP_SETUID and CAP_SETGID)"
        ) from None
    _clear_capabilities()
    if user.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise PrivilegeError(f"-Z {user.name}: root could be regained after the drop; refusing to go on")
