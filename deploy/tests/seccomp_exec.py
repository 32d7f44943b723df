#!/usr/bin/python3
"""Runs a command under an OCI seccomp profile (the JSON that runc, crun,
containerd and Kubernetes' Localhost profiles read), as a container runtime
would apply it to an unprivileged container with no capabilities:

    seccomp_exec.py PROFILE.json COMMAND [ARG...]

Builds the filter with libseccomp (Debian's python3-seccomp): the default
action, then one rule per syscall name. Entries whose `includes` need
capabilities or another architecture are left out, as are those whose
`minKernel` is above the running kernel; `excludes.caps` entries apply (we
hold no capabilities). Conditions on distinct arguments are ANDed in one
rule; several conditions on the same argument give one rule each (ORed),
as runc does. Names that this libseccomp or architecture does not know are
skipped. Then it execs COMMAND with the filter loaded (and no_new_privs).
"""
import json
import os
import platform
import sys

import seccomp

ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}[
    platform.machine()]

OPS = {
    "SCMP_CMP_NE": seccomp.NE,
    "SCMP_CMP_LT": seccomp.LT,
    "SCMP_CMP_LE": seccomp.LE,
    "SCMP_CMP_EQ": seccomp.EQ,
    "SCMP_CMP_GE": seccomp.GE,
    "SCMP_CMP_GT": seccomp.GT,
    "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}


def action(name, errno_ret):
    if name == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if name == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(errno_ret)
    if name == "SCMP_ACT_KILL" or name == "SCMP_ACT_KILL_THREAD":
        return seccomp.KILL
    if name == "SCMP_ACT_KILL_PROCESS":
        return seccomp.KILL_PROCESS
    if name == "SCMP_ACT_TRAP":
        return seccomp.TRAP
    if name == "SCMP_ACT_LOG":
        return seccomp.LOG
    raise SystemExit(f"seccomp_exec: unsupported action {name}")


def kernel_at_least(version):
    want = [int(x) for x in version.split(".")]
    have = [int(x) for x in platform.release().split("-")[0].split(".")[:2]]
    return have >= want


def applies(entry):
    includes = entry.get("includes") or {}
    if includes.get("caps"):
        return False
    if includes.get("arches") and not any(
            a in ("amd64", "x86_64", "x32", ARCH)
            if ARCH == "SCMP_ARCH_X86_64" else a in ("arm64", "aarch64", ARCH)
            for a in includes["arches"]):
        return False
    if includes.get("minKernel") and not kernel_at_least(
            includes["minKernel"]):
        return False
    excludes = entry.get("excludes") or {}
    if excludes.get("arches") and any(
            a in ("amd64", "x86_64") for a in excludes["arches"]):
        return False
    return True


def rules(entry):
    """Lists of seccomp.Arg, one list per rule."""
    args = [seccomp.Arg(a["index"], OPS[a["op"]], a["value"],
                        a.get("valueTwo", 0))
            for a in entry.get("args") or []]
    indexes = [a["index"] for a in entry.get("args") or []]
    if len(set(indexes)) == len(indexes):
        return [args]
    return [[a] for a in args]


def build(profile):
    default_errno = profile.get("defaultErrnoRet", 1)
    f = seccomp.SyscallFilter(action(profile["defaultAction"], default_errno))
    for entry in profile.get("syscalls", []):
        if not applies(entry):
            continue
        act = action(entry["action"], entry.get("errnoRet", default_errno))
        for name in entry["names"]:
            try:
                if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) == -1:
                    continue  # __NR_SCMP_ERROR: unknown to libseccomp
                for args in rules(entry):
                    f.add_rule(act, name, *args)
            except (ValueError, RuntimeError, OSError):
                continue
    return f


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    with open(sys.argv[1]) as f:
        profile = json.load(f)
    build(profile).load()
    os.execv(sys.argv[2], sys.argv[2:])


if __name__ == "__main__":
    main()
