"""Can this process make FUSE mounts? If not, one line that says what is wrong and how to fix it.

Checked before a mount starts its daemon: a mount that fails inside libfuse says only
"fuse: device not found" or "Permission denied", and said it in the log of a throw-away
container that is removed with it.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import sys

DEVICE = "/dev/fuse"
#: Appended to every problem: what still works without FUSE.
STILL_WORKS = "'vocker export' works without FUSE"


def _in_container() -> bool:
    """Docker, Podman and systemd-nspawn leave one of these marks."""
    if os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv") or os.environ.get("container"):
        return True
    try:
        with open("/proc/1/cgroup", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    return any(word in text for word in ("docker", "kubepods", "containerd", "lxc", "libpod"))


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _user() -> str:
    return _owner(os.geteuid())


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _no_access(device: str) -> str:
    """Why the device may not be opened, and who can change that."""
    st = os.stat(device)
    mode = stat.S_IMODE(st.st_mode)
    group = _group(st.st_gid)
    if st.st_gid != 0 and mode & 0o060 == 0o060 and st.st_gid not in os.getgroups():
        return (f"{device} is usable by the group '{group}' and you ({_user()}) are not in it: "
                f"sudo usermod -aG {group} {_user()}, then log in again")
    return (f"you ({_user()}) may not open {device} (mode {mode:04o}, owner {_owner(st.st_uid)}:{group}); "
            f"root can allow every user: sudo chmod 0666 {device}")


def problem(device: str = DEVICE, fusermount: str | None = None) -> str | None:
    """None when FUSE mounts can work here, else one line: what is missing and how to get it.

    ``device`` and ``fusermount`` name the files to check (by default /dev/fuse and the
    fusermount3 on PATH).
    """
    if not sys.platform.startswith("linux"):
        return f"FUSE mounts need Linux (this is {sys.platform}); {STILL_WORKS}"
    fusermount = fusermount or shutil.which("fusermount3")
    if not fusermount or not os.path.isfile(fusermount):
        return f"FUSE is not available: fusermount3 is not installed (sudo apt-get install fuse3); {STILL_WORKS}"
    if not os.path.exists(device):
        how = ("this container has no FUSE device: start it with --device /dev/fuse --cap-add SYS_ADMIN"
               if _in_container() else "load the kernel module: sudo modprobe fuse")
        return f"FUSE is not available: there is no {device} ({how}); {STILL_WORKS}"
    try:
        os.close(os.open(device, os.O_RDWR | os.O_CLOEXEC))
    except PermissionError:
        return f"FUSE is not available: {_no_access(device)}; {STILL_WORKS}"
    except OSError as exc:  # ENODEV/ENXIO: a device node without the kernel's FUSE behind it
        how = " (the container needs --device /dev/fuse)" if _in_container() else " (sudo modprobe fuse)"
        return f"FUSE is not available: cannot open {device}: {exc.strerror}{how}; {STILL_WORKS}"
    if os.geteuid() != 0:
        st = os.stat(fusermount)
        if st.st_uid != 0 or not st.st_mode & stat.S_ISUID:
            return (f"FUSE is not available: {fusermount} is not setuid root, so users cannot mount with it "
                    f"(sudo chmod u+s {fusermount}); {STILL_WORKS}")
    return None
