"""Which container a process runs in, from its cgroup (/proc/PID/cgroup, cgroup v2 and v1 lines).

Container runtimes put each container in a cgroup named after its id: docker (`/docker/<id>`,
`docker-<id>.scope`), podman (`libpod-<id>.scope`, `/libpod_parent/libpod-<id>`), containerd's CRI plugin
(`cri-containerd-<id>.scope`, `...slice:cri-containerd:<id>`), CRI-O (`crio-<id>.scope`), kubernetes pods
(`kubepods…pod<uid>…`, then the container's cgroup) and LXC (`/lxc/<name>`, `/lxc.payload.<name>`). The
name given is short, as `docker ps` shows ids: `docker:0123456789ab`, `k8s:pod1234abcd/0123456789ab`.
"""

from __future__ import annotations

import re

SHORT_ID = 12  # hex digits of a container id shown, as `docker ps` does
POD_UID_SHOWN = 8

# runtime → the pattern of its cgroup path component; group "id" is the container's id or name.
# Tried in order on each cgroup line; the last (innermost) match of a line wins.
RUNTIMES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("podman", re.compile(r"(?:^|/)libpod-(?!conmon-)(?P<id>[0-9a-f]{64})(?:\.scope)?(?=/|$)")),
    ("containerd", re.compile(r"(?:(?:^|/)cri-containerd-|:cri-containerd:)(?P<id>[0-9a-f]{64})(?:\.scope)?(?=/|$)")),
    ("crio", re.compile(r"(?:^|/)crio-(?P<id>[0-9a-f]{64})(?:\.scope)?(?=/|$)")),
    ("docker", re.compile(r"(?:(?:^|/)docker-|/docker/)(?P<id>[0-9a-f]{64})(?:\.scope)?(?=/|$)")),
    ("lxc", re.compile(r"(?:/lxc/|/lxc\.payload\.)(?P<id>[^/]+)")),
)
# A kubernetes pod (cgroupfs: /kubepods/besteffort/pod<uid>/<id>; systemd: kubepods-…-pod<uid_with_underscores>.slice;
# the uid's dashes may be left out).
K8S_POD = re.compile(r"kubepods.*?[/-]pod(?P<uid>[0-9a-f]{8}(?:[-_]?[0-9a-f]{4}){3}[-_]?[0-9a-f]{12})")
ANY_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


def container_of_path(path: str) -> str:
    """The container a cgroup path names, as `runtime:shortid` (`k8s:pod<uid8>/<id12>` in a pod); "" for none."""
    pod = K8S_POD.search(path)
    if pod is not None:
        uid = pod["uid"].replace("_", "").replace("-", "")[:POD_UID_SHOWN]
        ids = ANY_ID.findall(path, pod.end())
        return f"k8s:pod{uid}/{ids[-1][:SHORT_ID]}" if ids else f"k8s:pod{uid}"
    for runtime, pattern in RUNTIMES:
        found = list(pattern.finditer(path))
        if found:
            ident = found[-1]["id"]
            return f"{runtime}:{ident[:SHORT_ID] if runtime != 'lxc' else ident}"
    return ""


def container_of_cgroup(text: str) -> str:
    """The container of a /proc/PID/cgroup file's text: the first line (v2 `0::PATH` or v1
    `N:controllers:PATH`) whose path names one; "" when none does."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        name = container_of_path(path)
        if name:
            return name
    return ""


def container_of_pid(pid: int) -> str:
    """The container process `pid` runs in ("" for none, or when its cgroup cannot be read)."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            return container_of_cgroup(f.read())
    except OSError:
        return ""
