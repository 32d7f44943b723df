// Reading what the memory cgroups of a process let it use, in both layouts:
// cgroup v2 (memory.max, memory.current) and cgroup v1 (the memory
// controller's memory.limit_in_bytes, memory.usage_in_bytes), on unified,
// legacy and hybrid hosts.
//
// Before this reader the daemon read only /sys/fs/cgroup/memory.max: under
// a cgroup v1 limit it saw none, loaded past it and was OOM-killed with
// every model. The reader takes the cgroup file system's root and the
// process's cgroup file as parameters, so tests give it a fake tree.
//
// Plain functions of the file system; thread-safe.
#ifndef WARMSTART_DAEMON_DEVICE_CGROUP_MEMORY_H_
#define WARMSTART_DAEMON_DEVICE_CGROUP_MEMORY_H_

#include <cstdint>
#include <limits>
#include <string>

#include "absl/status/statusor.h"

namespace warmstart {

struct CgroupMemory {
  // The limit that leaves the least room, over the process's cgroup and its
  // ancestors in every hierarchy with a memory controller; 0 when none.
  uint64_t limit = 0;
  // The usage of the cgroup whose limit that is, less its inactive page
  // cache, which is reclaimed first (it counts the pages of shared memory
  // its processes touched first, including a memfd a client still maps
  // after the daemon closed it).
  uint64_t usage = 0;
  // The file that set `limit` ("" when none), for messages.
  std::string limit_file;
  // Shared memory (shmem) charged to the process's own cgroup, from
  // memory.stat; 0 when unknown, and when the cgroup holds other processes
  // too (cgroup.procs lists more than one): their shared memory would be
  // taken for the daemon's. A systemd unit's or a container's cgroup holds
  // the daemon alone.
  uint64_t shmem = 0;

  // Whether any limit was found (a limit of 0 bytes is one: a pod that
  // requests no hugepages-2Mi).
  bool has_limit = false;

  // What may still be charged before the limit: unlimited when none.
  uint64_t free() const {
    if (!has_limit) return std::numeric_limits<uint64_t>::max();
    return limit > usage ? limit - usage : 0;
  }
};

// Reads the memory cgroups named in `self_cgroup_file` (the format of
// /proc/self/cgroup: "0::/path" for v2, "N:memory:/path" for v1) under
// `cgroup_root` (normally /sys/fs/cgroup). Where v2 is mounted is found by
// looking: `cgroup_root` itself (unified hosts) or `cgroup_root`/unified
// (hybrid); v1's memory controller is `cgroup_root`/memory. A cgroup
// directory that does not exist is read at its hierarchy's root (a
// container without a cgroup namespace sees its own cgroup there). A v1
// limit at or above 2^62 means none.
// Errors: the errno status of `self_cgroup_file`, naming it; a limit file
// that exists but does not hold a number is InvalidArgument naming it.
absl::StatusOr<CgroupMemory> ReadCgroupMemory(
    const std::string& cgroup_root, const std::string& self_cgroup_file);

// As ReadCgroupMemory, for 2 MiB hugetlb pages: the tightest of the
// hugetlb controller's limits on pages taken (v2 hugetlb.2MB.max, v1
// hugetlb.2MB.limit_in_bytes) and on pages reserved at mmap (the .rsvd
// files), with the matching usage; limit 0 when none. A Kubernetes pod
// that requests no hugepages-2Mi is held to 0 bytes. `shmem` is unused.
absl::StatusOr<CgroupMemory> ReadCgroupHugetlb(
    const std::string& cgroup_root, const std::string& self_cgroup_file);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_DEVICE_CGROUP_MEMORY_H_
