#include "daemon/device/cgroup_memory.h"

#include <sys/stat.h>

#include <cerrno>
#include <fstream>
#include <functional>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/errno_status.h"
#include "common/status_macros.h"

namespace warmstart {
namespace {

// v1 reports "no limit" as the largest page counter (0x7FFFFFFFFFFFF000 on
// 4 KiB pages); anything this large is no limit.
constexpr uint64_t kV1Unlimited = uint64_t{1} << 62;

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

enum class Read { kAbsent, kNumber, kMax };

// Reads a one-number file ("max" in v2 means none). kAbsent when the file
// is not there.
absl::StatusOr<Read> ReadNumber(const std::string& path, uint64_t* value) {
  std::ifstream file(path);
  if (!file.is_open()) return Read::kAbsent;
  std::string text;
  std::getline(file, text);
  absl::string_view trimmed = absl::StripAsciiWhitespace(text);
  if (trimmed == "max") return Read::kMax;
  if (!absl::SimpleAtoi(trimmed, value)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": expected a number of bytes or \"max\", found \"",
                     absl::CHexEscape(trimmed.substr(0, 40)), "\""));
  }
  return Read::kNumber;
}

// `key`'s value in a memory.stat file; 0 when absent.
uint64_t ReadStat(const std::string& path, absl::string_view key) {
  std::ifstream file(path);
  std::string line;
  while (std::getline(file, line)) {
    std::vector<absl::string_view> parts =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    uint64_t value = 0;
    if (parts.size() == 2 && parts[0] == key &&
        absl::SimpleAtoi(parts[1], &value)) {
      return value;
    }
  }
  return 0;
}

// Whether the cgroup directory `level` holds one process only.
bool HoldsOneProcess(const std::string& level) {
  std::ifstream procs(level + "/cgroup.procs");
  std::string line;
  int count = 0;
  while (std::getline(procs, line)) {
    if (!line.empty()) ++count;
  }
  return count == 1;
}

// The directories from `hierarchy_root`/`path` up to `hierarchy_root`; just
// the root when `path`'s directory is not there.
std::vector<std::string> Levels(const std::string& hierarchy_root,
                                const std::string& path) {
  std::vector<std::string> levels;
  std::vector<absl::string_view> parts =
      absl::StrSplit(path, '/', absl::SkipEmpty());
  if (!IsDirectory(absl::StrCat(hierarchy_root, "/", path))) parts.clear();
  for (size_t n = parts.size();; --n) {
    std::string level = hierarchy_root;
    for (size_t i = 0; i < n; ++i) absl::StrAppend(&level, "/", parts[i]);
    levels.push_back(std::move(level));
    if (n == 0) break;
  }
  return levels;
}

// Lowers `out` to the tightest limit among `levels`, reading `limit_name`
// and `usage_name` in each; usage less the `inactive_file_key` of
// memory.stat (none when null).
absl::Status Tighten(const std::vector<std::string>& levels,
                     const char* limit_name, const char* usage_name,
                     const char* inactive_file_key, uint64_t unlimited_from,
                     CgroupMemory& out) {
  for (const std::string& level : levels) {
    const std::string limit_file = absl::StrCat(level, "/", limit_name);
    uint64_t limit = 0;
    absl::StatusOr<Read> read = ReadNumber(limit_file, &limit);
    if (!read.ok()) return read.status();
    if (*read != Read::kNumber || limit >= unlimited_from) continue;
    uint64_t usage = 0;
    const std::string usage_file = absl::StrCat(level, "/", usage_name);
    absl::StatusOr<Read> used = ReadNumber(usage_file, &usage);
    if (!used.ok()) return used.status();
    // Usage counts the page cache of the model files read; the inactive
    // part of it is reclaimed before the limit bites (what the kubelet
    // calls the working set).
    const uint64_t inactive =
        inactive_file_key == nullptr
            ? 0
            : ReadStat(absl::StrCat(level, "/memory.stat"), inactive_file_key);
    usage = usage > inactive ? usage - inactive : 0;
    CgroupMemory candidate;
    candidate.limit = limit;
    candidate.usage = usage;
    candidate.has_limit = true;
    if (!out.has_limit || candidate.free() < out.free()) {
      out.limit = limit;
      out.usage = usage;
      out.limit_file = limit_file;
      out.has_limit = true;
    }
  }
  return absl::OkStatus();
}

// Calls `visit(levels, v2)` with the directories from this process's cgroup
// up to the hierarchy's root (Levels), for the v2 hierarchy (mounted at the
// root on unified hosts, at "unified" on hybrid ones) and for v1's
// `controller` hierarchy, as named in `self_cgroup_file`.
absl::Status VisitCgroups(
    const std::string& cgroup_root, const std::string& self_cgroup_file,
    absl::string_view controller,
    const std::function<absl::Status(const std::vector<std::string>& levels,
                                     bool v2)>& visit) {
  std::ifstream self(self_cgroup_file);
  if (!self.is_open()) return ErrnoToStatus(errno, self_cgroup_file);
  std::string line;
  while (std::getline(self, line)) {
    // hierarchy-ID:controller-list:path; the path may hold ':'.
    std::vector<std::string> fields =
        absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (fields.size() != 3) continue;
    const std::string& path = fields[2];
    if (fields[0] == "0" && fields[1].empty()) {
      for (const std::string& mount :
           {cgroup_root, absl::StrCat(cgroup_root, "/unified")}) {
        if (IsDirectory(mount)) {
          WS_RETURN_IF_ERROR(visit(Levels(mount, path), /*v2=*/true));
        }
      }
      continue;
    }
    bool listed = false;
    for (absl::string_view c : absl::StrSplit(fields[1], ',')) {
      listed = listed || c == controller;
    }
    const std::string mount = absl::StrCat(cgroup_root, "/", controller);
    if (listed && IsDirectory(mount)) {
      WS_RETURN_IF_ERROR(visit(Levels(mount, path), /*v2=*/false));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CgroupMemory> ReadCgroupMemory(
    const std::string& cgroup_root, const std::string& self_cgroup_file) {
  CgroupMemory out;
  WS_RETURN_IF_ERROR(VisitCgroups(
      cgroup_root, self_cgroup_file, "memory",
      [&out](const std::vector<std::string>& levels, bool v2) -> absl::Status {
        if (v2) {
          WS_RETURN_IF_ERROR(
              Tighten(levels, "memory.max", "memory.current", "inactive_file",
                      std::numeric_limits<uint64_t>::max(), out));
          if (out.shmem == 0 && HoldsOneProcess(levels.front())) {
            out.shmem = ReadStat(levels.front() + "/memory.stat", "shmem");
          }
          return absl::OkStatus();
        }
        WS_RETURN_IF_ERROR(Tighten(levels, "memory.limit_in_bytes",
                                   "memory.usage_in_bytes",
                                   "total_inactive_file", kV1Unlimited, out));
        // v1 counts a cgroup's own shmem as "shmem", with its children's as
        // "total_shmem".
        if (HoldsOneProcess(levels.front())) {
          const uint64_t shmem =
              ReadStat(levels.front() + "/memory.stat", "total_shmem");
          if (shmem > out.shmem) out.shmem = shmem;
        }
        return absl::OkStatus();
      }));
  return out;
}

absl::StatusOr<CgroupMemory> ReadCgroupHugetlb(
    const std::string& cgroup_root, const std::string& self_cgroup_file) {
  CgroupMemory out;
  // Both counters: pages charged when taken and when reserved at mmap
  // (the rsvd files, Linux 5.7); a limit on either refuses the arena.
  WS_RETURN_IF_ERROR(VisitCgroups(
      cgroup_root, self_cgroup_file, "hugetlb",
      [&out](const std::vector<std::string>& levels, bool v2) -> absl::Status {
        if (v2) {
          constexpr uint64_t kNone = std::numeric_limits<uint64_t>::max();
          WS_RETURN_IF_ERROR(Tighten(levels, "hugetlb.2MB.max",
                                     "hugetlb.2MB.current", nullptr, kNone,
                                     out));
          return Tighten(levels, "hugetlb.2MB.rsvd.max",
                         "hugetlb.2MB.rsvd.current", nullptr, kNone, out);
        }
        WS_RETURN_IF_ERROR(Tighten(levels, "hugetlb.2MB.limit_in_bytes",
                                   "hugetlb.2MB.usage_in_bytes", nullptr,
                                   kV1Unlimited, out));
        return Tighten(levels, "hugetlb.2MB.rsvd.limit_in_bytes",
                       "hugetlb.2MB.rsvd.usage_in_bytes", nullptr, kV1Unlimited,
                       out);
      }));
  return out;
}

}  // namespace warmstart
