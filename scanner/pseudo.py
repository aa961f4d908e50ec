"""Pseudo file systems: the kernel's views (proc, sysfs, cgroup...) that hold no data of anyone's.

Their files report sizes that are not their contents (/proc/kcore claims 128 TB; pagemap reads
far past its size 0) and their trees change on every look, so the scanner walks into none below
a source unless asked (`include_pseudo_fs`). Which devices are such views is read from
/proc/self/mountinfo once per scan; a directory is then told by its st_dev alone.
"""

from __future__ import annotations

import os
import re

# tmpfs is not among them: /dev/shm, /run and /tmp hold real files.
PSEUDO_TYPES = frozenset(
    {
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fusectl",
        "hugetlbfs",
        "mqueue",
        "nsfs",
        "proc",
        "pstore",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "sysfs",
        "tracefs",
    }
)
MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(rb"\\([0-7]{3})")


def pseudo_devices(mountinfo: str = MOUNTINFO) -> dict[int, tuple[bytes, str]]:
    """The st_dev of every mounted pseudo file system: (its mount point, its type). Empty when
    mountinfo cannot be read (not Linux, no /proc): then nothing is skipped."""
    found: dict[int, tuple[bytes, str]] = {}
    try:
        with open(mountinfo, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        # ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER
        left, sep, right = line.partition(b" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        fstype = right.split()[0].decode("ascii", "replace")
        if fstype.split(".")[0] not in PSEUDO_TYPES:
            continue
        major, _, minor = fields[2].partition(b":")
        point = _OCTAL.sub(lambda m: bytes([int(m[1], 8)]), fields[4])
        try:
            found[os.makedev(int(major), int(minor))] = (point, fstype)
        except ValueError:
            continue
    return found
