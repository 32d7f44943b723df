#include "daemon/device/host_device.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/base/metrics.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;
using ::warmstart::StatusIs;

TEST(HostDeviceTest, AllocationIsZeroedWritableAndExportedAsMemfd) {
  HostDevice device(HostDeviceOptions{});
  ASSERT_OK_AND_ASSIGN(auto allocation, device.Allocate(10000, "model-a"));
  EXPECT_GE(allocation->size(), 10000u);
  char* data = allocation->host_data();
  ASSERT_NE(data, nullptr);
  for (uint64_t i = 0; i < allocation->size(); ++i) ASSERT_EQ(data[i], 0) << i;

  const std::string payload = "weights!";
  std::atomic<bool> done{false};
  device.CopyFromHost(*allocation, 4096, payload.data(), payload.size(),
                      [&](absl::Status status) {
                        EXPECT_OK(status);
                        done = true;
                      });
  ASSERT_OK(device.Synchronize());
  EXPECT_TRUE(done);
  EXPECT_EQ(std::string(data + 4096, payload.size()), payload);

  ExportedMemory exported = allocation->Export();
  EXPECT_EQ(exported.kind, ExportedMemory::Kind::kHostMemfd);
  EXPECT_EQ(exported.size, allocation->size());
  // Another mapping of the exported descriptor sees the same bytes.
  void* view =
      ::mmap(nullptr, exported.size, PROT_READ, MAP_SHARED, exported.fd, 0);
  ASSERT_NE(view, MAP_FAILED);
  EXPECT_EQ(std::memcmp(static_cast<char*>(view) + 4096, payload.data(),
                        payload.size()),
            0);
  ::munmap(view, exported.size);
}

TEST(HostDeviceTest, CopiesRunOnSeveralCopyThreadsAtOnce) {
  HostDevice device(HostDeviceOptions{.copy_threads = 2});
  constexpr uint64_t kCopy = 1 << 20;  // Large enough to be queued.
  ASSERT_OK_AND_ASSIGN(auto allocation, device.Allocate(2 * kCopy, "model-a"));
  const std::string first(kCopy, '1');
  const std::string second(kCopy, '2');
  absl::Notification second_copied;
  std::atomic<bool> first_saw_second{false};
  // The first copy's completion waits for the second copy's: with one
  // thread (or copies on the caller's thread) the second never runs while
  // the first waits, and the wait times out.
  device.CopyFromHost(
      *allocation, 0, first.data(), first.size(), [&](absl::Status status) {
        EXPECT_OK(status);
        first_saw_second =
            second_copied.WaitForNotificationWithTimeout(absl::Seconds(30));
      });
  device.CopyFromHost(*allocation, kCopy, second.data(), second.size(),
                      [&](absl::Status status) {
                        EXPECT_OK(status);
                        second_copied.Notify();
                      });
  ASSERT_OK(device.Synchronize());
  EXPECT_TRUE(first_saw_second);
  // Compared as booleans: a failure would print a megabyte otherwise.
  EXPECT_TRUE(std::string(allocation->host_data(), kCopy) == first);
  EXPECT_TRUE(std::string(allocation->host_data() + kCopy, kCopy) == second);
}

TEST(HostDeviceTest, SynchronizeWaitsForEveryQueuedCopyOffTheCallersThread) {
  HostDevice device(HostDeviceOptions{.copy_threads = 2});
  constexpr uint64_t kPiece = 1 << 20;
  constexpr int kPieces = 16;
  ASSERT_OK_AND_ASSIGN(auto allocation,
                       device.Allocate(kPiece * kPieces, "model-a"));
  std::string source(kPiece * kPieces, '\0');
  for (size_t i = 0; i < source.size(); ++i)
    source[i] = static_cast<char>(i * 7);
  std::atomic<int> completed{0};
  std::atomic<int> on_callers_thread{0};
  const std::thread::id caller = std::this_thread::get_id();
  for (int i = 0; i < kPieces; ++i) {
    device.CopyFromHost(*allocation, i * kPiece, source.data() + i * kPiece,
                        kPiece, [&](absl::Status status) {
                          EXPECT_OK(status);
                          if (std::this_thread::get_id() == caller) {
                            ++on_callers_thread;
                          }
                          ++completed;
                        });
  }
  ASSERT_OK(device.Synchronize());
  EXPECT_EQ(completed, kPieces);
  EXPECT_EQ(on_callers_thread, 0);
  EXPECT_EQ(std::memcmp(allocation->host_data(), source.data(), source.size()),
            0);
}

TEST(HostDeviceTest, SmallCopiesAreDoneOnTheCallersThread) {
  HostDevice device(HostDeviceOptions{.copy_threads = 2});
  ASSERT_OK_AND_ASSIGN(auto allocation, device.Allocate(1 << 20, "model-a"));
  const std::string payload(200 << 10, 'w');
  bool done = false;
  std::thread::id ran_on;
  device.CopyFromHost(*allocation, 0, payload.data(), payload.size(),
                      [&](absl::Status status) {
                        EXPECT_OK(status);
                        ran_on = std::this_thread::get_id();
                        done = true;
                      });
  EXPECT_TRUE(done);
  EXPECT_EQ(ran_on, std::this_thread::get_id());
  EXPECT_TRUE(std::string(allocation->host_data(), payload.size()) == payload);
}

TEST(HostDeviceTest, WithoutCopyThreadsACopyIsDoneWhenCopyFromHostReturns) {
  HostDevice device(HostDeviceOptions{.copy_threads = 0});
  ASSERT_OK_AND_ASSIGN(auto allocation, device.Allocate(4096, "model-a"));
  const std::string payload = "weights!";
  bool done = false;
  std::thread::id ran_on;
  device.CopyFromHost(*allocation, 0, payload.data(), payload.size(),
                      [&](absl::Status status) {
                        EXPECT_OK(status);
                        ran_on = std::this_thread::get_id();
                        done = true;
                      });
  EXPECT_TRUE(done);
  EXPECT_EQ(ran_on, std::this_thread::get_id());
  EXPECT_EQ(std::string(allocation->host_data(), payload.size()), payload);
}

TEST(HostDeviceTest, ACopyPastTheEndIsAnErrorNotAWait) {
  HostDevice device(HostDeviceOptions{});
  ASSERT_OK_AND_ASSIGN(auto allocation, device.Allocate(8192, "model-a"));
  const std::string payload(1 << 20, 'x');  // Large enough to be queued.
  absl::Status status;
  device.CopyFromHost(*allocation, allocation->size() - 4096, payload.data(),
                      payload.size(),
                      [&](absl::Status copied) { status = copied; });
  ASSERT_OK(device.Synchronize());
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kOutOfRange));
}

TEST(HostDeviceTest, SealingReservesThePagesNothingWrote) {
  // Only the first page is written; the rest (padding, meta tensors) must
  // still be the daemon's, not allocated later by a client's read.
  HostDevice device(HostDeviceOptions{});
  constexpr uint64_t kBytes = uint64_t{256} << 20;
  ASSERT_OK_AND_ASSIGN(auto allocation, device.Allocate(kBytes, "model-a"));
  const std::string payload(4096, 'w');
  device.CopyFromHost(*allocation, 0, payload.data(), payload.size(),
                      [](absl::Status status) { EXPECT_OK(status); });
  ASSERT_OK(device.Synchronize());
  ASSERT_OK(allocation->Seal());
  const ExportedMemory exported = allocation->Export();
  struct stat st;
  ASSERT_EQ(::fstat(exported.fd, &st), 0);
  EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, allocation->size());
}

TEST(HostDeviceTest, SealedMemoryCannotBeWrittenOrResizedThroughTheExport) {
  HostDevice device(HostDeviceOptions{});
  ASSERT_OK_AND_ASSIGN(auto allocation, device.Allocate(1 << 20, "sealed"));
  allocation->host_data()[0] = 42;
  ASSERT_OK(allocation->Seal());

  // What a client would get: its own descriptor for the memfd.
  const int fd = ::dup(allocation->Export().fd);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0),
            MAP_FAILED);
  EXPECT_EQ(errno, EPERM);
  EXPECT_NE(::ftruncate(fd, 0), 0);
  EXPECT_NE(::ftruncate(fd, 1 << 21), 0);
  char byte = 1;
  EXPECT_NE(::pwrite(fd, &byte, 1, 0), 1);
  EXPECT_EQ(::fcntl(fd, F_GET_SEALS) & F_SEAL_SEAL, F_SEAL_SEAL);
  // Read-only mappings still work and see the data.
  void* view = ::mmap(nullptr, 4096, PROT_READ, MAP_SHARED, fd, 0);
  ASSERT_NE(view, MAP_FAILED);
  EXPECT_EQ(static_cast<char*>(view)[0], 42);
  // mprotect cannot make a shared read-only mapping of a sealed memfd
  // writable.
  EXPECT_NE(::mprotect(view, 4096, PROT_READ | PROT_WRITE), 0);
  ::munmap(view, 4096);
  ::close(fd);
}

TEST(HostDeviceTest, TheDaemonKeepsNoWritableMappingOfASealedArena) {
  // Before, the daemon kept its read-write mapping of every sealed arena:
  // a stray write in the daemon changed what clients map read-only.
  HostDevice device(HostDeviceOptions{});
  ASSERT_OK_AND_ASSIGN(auto allocation, device.Allocate(1 << 20, "sealed"));
  allocation->host_data()[0] = 42;
  ASSERT_OK(allocation->Seal());
  EXPECT_EQ(allocation->host_data()[0], 42);  // Still readable.
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  EXPECT_DEATH(allocation->host_data()[0] = 7, "");
}

TEST(HostDeviceTest, AllocationBeyondMemoryIsResourceExhausted) {
  HostDevice device(HostDeviceOptions{.huge_pages = false});
  EXPECT_THAT(
      device.Allocate(uint64_t{1} << 42, "too-big"),
      StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("too-big")));
}

TEST(HostDeviceTest, HugePageFallbackIsCounted) {
  Metrics metrics;
  Counter* fallbacks =
      metrics.GetCounter("warmstart_host_hugepage_fallback_total", "");
  HostDevice device(HostDeviceOptions{.huge_pages = true, .metrics = &metrics});
  ASSERT_OK_AND_ASSIGN(auto allocation, device.Allocate(4 << 20, "huge"));
  if (allocation->size() % (2 << 20) == 0 && fallbacks->value() == 0) {
    GTEST_SKIP() << "this machine has huge pages reserved";
  }
  EXPECT_EQ(fallbacks->value(), 1u);
}

TEST(HostDeviceTest, WritersWaitForTheReservationAndReleaseNeverHangs) {
  HostDevice device(HostDeviceOptions{.huge_pages = false});
  ASSERT_OK_AND_ASSIGN(auto allocation, device.Allocate(256 << 20, "big"));
  ASSERT_OK(allocation->WaitWritable(allocation->size()));
  allocation->host_data()[allocation->size() - 1] = 1;
  // Destroyed while pages are still being faulted in: the background
  // threads stop instead of waiting for work that will not come.
  for (int i = 0; i < 5; ++i) {
    ASSERT_OK_AND_ASSIGN(auto released, device.Allocate(512 << 20, "gone"));
  }
}

// RssShmem of this process, in KiB.
uint64_t RssShmemKib() {
  std::FILE* status = std::fopen("/proc/self/status", "re");
  if (status == nullptr) return 0;
  char line[256];
  unsigned long long value = 0;
  while (std::fgets(line, sizeof(line), status) != nullptr) {
    if (std::sscanf(line, "RssShmem: %llu kB", &value) == 1) break;
  }
  std::fclose(status);
  return value;
}

TEST(HostDeviceTest, SmallPagesAreWrittenThroughTheMemfdNotTheMapping) {
  HostDevice device(
      HostDeviceOptions{.huge_pages = false, .transparent_huge_pages = false});
  constexpr uint64_t kBytes = uint64_t{64} << 20;
  ASSERT_OK_AND_ASSIGN(auto allocation, device.Allocate(kBytes, "through"));
  EXPECT_TRUE(allocation->PrefersCopies());
  std::string source(kBytes, '\0');
  for (uint64_t i = 0; i < kBytes; ++i) source[i] = static_cast<char>(i * 7);
  const uint64_t before = RssShmemKib();
  // Copies at unaligned offsets and lengths, as tensors come.
  constexpr uint64_t kPiece = (uint64_t{3} << 20) + 17;
  for (uint64_t offset = 0; offset < kBytes; offset += kPiece) {
    const uint64_t bytes = std::min(kPiece, kBytes - offset);
    std::atomic<bool> done{false};
    device.CopyFromHost(*allocation, offset, source.data() + offset, bytes,
                        [&](absl::Status status) {
                          EXPECT_OK(status);
                          done = true;
                        });
    ASSERT_OK(device.Synchronize());
    EXPECT_TRUE(done);
  }
  // The pages were filled without being mapped into this process.
  EXPECT_LT(RssShmemKib(), before + (kBytes >> 10) / 4);
  EXPECT_EQ(std::memcmp(allocation->host_data(), source.data(), kBytes), 0);
  ASSERT_OK(allocation->Seal());
}

TEST(HostDeviceTest, WritingThroughTheMappingStaysAvailable) {
  HostDevice device(HostDeviceOptions{.huge_pages = false,
                                      .transparent_huge_pages = false,
                                      .write_through_fd = false});
  ASSERT_OK_AND_ASSIGN(auto allocation, device.Allocate(1 << 20, "mapped"));
  EXPECT_FALSE(allocation->PrefersCopies());
  const std::string payload = "weights!";
  std::atomic<bool> done{false};
  device.CopyFromHost(*allocation, 5000, payload.data(), payload.size(),
                      [&](absl::Status status) {
                        EXPECT_OK(status);
                        done = true;
                      });
  ASSERT_OK(device.Synchronize());
  EXPECT_TRUE(done);
  EXPECT_EQ(std::string(allocation->host_data() + 5000, payload.size()),
            payload);
}

// A file under /tmp holding `text`, removed when the test ends.
class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    char path[] = "/tmp/host_device_test.XXXXXX";
    const int fd = ::mkstemp(path);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::write(fd, text.data(), text.size()),
              static_cast<ssize_t>(text.size()));
    ::close(fd);
    path_ = path;
  }
  ~TempFile() { ::unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(HostPageChoiceTest, EachShmemSettingGivesItsPages) {
  const struct {
    const char* sysfs;
    HostPageKind kind;
  } cases[] = {
      {"always within_size advise [never] deny force\n", HostPageKind::kSmall},
      {"always within_size advise never [deny] force\n", HostPageKind::kSmall},
      {"always within_size [advise] never deny force\n",
       HostPageKind::kShmemThp},
      {"always [within_size] advise never deny force\n",
       HostPageKind::kShmemThp},
      {"[always] within_size advise never deny force\n",
       HostPageKind::kShmemThp},
      {"always within_size advise never deny [force]\n",
       HostPageKind::kShmemThp},
  };
  for (const auto& c : cases) {
    TempFile setting(c.sysfs);
    const HostPageChoice choice = ChooseShmemPages(setting.path());
    EXPECT_EQ(choice.kind, c.kind) << c.sysfs;
    EXPECT_THAT(choice.reason, HasSubstr(setting.path())) << c.sysfs;
  }
}

TEST(HostPageChoiceTest, UnreadableOrUnknownSettingIsSmallPagesWithTheReason) {
  HostPageChoice missing = ChooseShmemPages("/tmp/no-such-dir/shmem_enabled");
  EXPECT_EQ(missing.kind, HostPageKind::kSmall);
  EXPECT_THAT(missing.reason, HasSubstr("cannot read /tmp/no-such-dir"));
  TempFile garbage("sometimes\n");
  HostPageChoice unknown = ChooseShmemPages(garbage.path());
  EXPECT_EQ(unknown.kind, HostPageKind::kSmall);
  EXPECT_THAT(unknown.reason, HasSubstr("no known setting"));
}

TEST(HostPageChoiceTest, HugetlbIsPredictedFromFreeReservedPages) {
  TempFile never("always within_size advise [never] deny force\n");
  TempFile reserved(
      "MemAvailable: 1000000 kB\nHugePages_Total:      64\n"
      "HugePages_Free:       40\nHugepagesize:       2048 kB\n");
  TempFile none(
      "MemAvailable: 1000000 kB\nHugePages_Total:       0\n"
      "HugePages_Free:        0\nHugepagesize:       2048 kB\n");
  HostDevice with_pages(HostDeviceOptions{.shmem_thp_setting = never.path(),
                                          .meminfo = reserved.path()});
  HostPageChoice hugetlb = with_pages.PagesForNextAllocation();
  EXPECT_EQ(hugetlb.kind, HostPageKind::kHugetlb);
  EXPECT_THAT(hugetlb.reason, HasSubstr("40 free"));
  HostDevice without(HostDeviceOptions{.shmem_thp_setting = never.path(),
                                       .meminfo = none.path()});
  HostPageChoice small = without.PagesForNextAllocation();
  EXPECT_EQ(small.kind, HostPageKind::kSmall);
  EXPECT_THAT(small.reason, HasSubstr("no hugetlb pages free"));
}

TEST(HostPageChoiceTest, AHugetlbCgroupLimitTurnsHugetlbPagesDown) {
  // Pages reserved on the node, but a cgroup (a pod that requests no
  // hugepages-2Mi) allows none: taking them would fail the load, so the
  // arena is shmem, and the reason names the limit.
  TempFile never("always within_size advise [never] deny force\n");
  TempFile reserved(
      "MemAvailable: 1000000 kB\nHugePages_Total:      64\n"
      "HugePages_Free:       40\nHugepagesize:       2048 kB\n");
  testing::ShortTempDir dir;
  const std::string root = dir.Join("cgroup");
  ASSERT_EQ(::mkdir(root.c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((root + "/pod").c_str(), 0755), 0);
  std::ofstream(root + "/pod/hugetlb.2MB.max") << "0\n";
  std::ofstream(root + "/pod/hugetlb.2MB.current") << "0\n";
  std::ofstream(dir.Join("self_cgroup")) << "0::/pod\n";
  HostDevice held(HostDeviceOptions{.shmem_thp_setting = never.path(),
                                    .cgroup_root = root,
                                    .self_cgroup = dir.Join("self_cgroup"),
                                    .meminfo = reserved.path()});
  HostPageChoice choice = held.PagesForNextAllocation();
  EXPECT_EQ(choice.kind, HostPageKind::kSmall);
  EXPECT_THAT(choice.reason, HasSubstr(root + "/pod/hugetlb.2MB.max"));
  EXPECT_THAT(choice.reason, HasSubstr("hugepages-2Mi"));
  // Allocations fall back too, and are counted as such (this half cannot
  // tell the cgroup from a machine without reserved pages, which also
  // falls back; the prediction above can).
  Metrics metrics;
  HostDevice counted(HostDeviceOptions{.shmem_thp_setting = never.path(),
                                       .cgroup_root = root,
                                       .self_cgroup = dir.Join("self_cgroup"),
                                       .meminfo = reserved.path(),
                                       .metrics = &metrics});
  ASSERT_OK_AND_ASSIGN(auto allocation, counted.Allocate(1 << 20, "model-a"));
  EXPECT_EQ(
      metrics.Snapshot()["warmstart_host_allocations_total{pages=\"4k\"}"], 1);
  EXPECT_EQ(metrics.Snapshot()["warmstart_host_hugepage_fallback_total"], 1);
  // With room under the limit, the reserved pages are predicted again.
  std::ofstream(root + "/pod/hugetlb.2MB.max") << (1 << 30) << "\n";
  EXPECT_EQ(held.PagesForNextAllocation().kind, HostPageKind::kHugetlb);
}

// The VmFlags line of the mapping of this process that holds `address`.
std::string VmFlagsOf(const void* address) {
  std::FILE* smaps = std::fopen("/proc/self/smaps", "re");
  if (smaps == nullptr) return "";
  const auto at = reinterpret_cast<uintptr_t>(address);
  char line[512];
  bool inside = false;
  std::string flags;
  while (std::fgets(line, sizeof(line), smaps) != nullptr) {
    unsigned long long begin, end;
    char dash;
    if (std::sscanf(line, "%llx%c%llx ", &begin, &dash, &end) == 3 &&
        dash == '-') {
      inside = at >= begin && at < end;
    } else if (inside && std::strncmp(line, "VmFlags:", 8) == 0) {
      flags = line;
      break;
    }
  }
  std::fclose(smaps);
  return flags;
}

bool KernelHasTransparentHugePages() {
  return ::access("/sys/kernel/mm/transparent_hugepage", F_OK) == 0;
}

// Both settings that allow huge pages for advised mappings but differ for
// writes to the memfd get the same: an advised mapping, faulted in ahead as
// the reservation, written through.
TEST(HostDeviceTest, HugePageSettingsAdviseTheMappingAndFaultItInAhead) {
  if (!KernelHasTransparentHugePages()) {
    GTEST_SKIP() << "this kernel has no transparent huge pages";
  }
  Metrics metrics;  // Outlives the devices, which count into it.
  CounterFamily* allocations = metrics.GetCounterFamily(
      "warmstart_host_allocations_total", "", {"pages"});
  for (const char* sysfs : {"always within_size [advise] never deny force\n",
                            "always [within_size] advise never deny force\n"}) {
    TempFile setting(sysfs);
    HostDevice device(HostDeviceOptions{.huge_pages = false,
                                        .shmem_thp_setting = setting.path(),
                                        .metrics = &metrics});
    const uint64_t counted = allocations->WithLabels({"shmem_thp"})->value();
    const uint64_t resident = RssShmemKib();
    constexpr uint64_t kAsked = (uint64_t{15} << 20) + 1;
    ASSERT_OK_AND_ASSIGN(auto allocation, device.Allocate(kAsked, "huge"));
    EXPECT_EQ(allocation->size(), uint64_t{16} << 20) << sysfs;  // 2 MiB.
    EXPECT_FALSE(allocation->PrefersCopies()) << sysfs;
    EXPECT_THAT(VmFlagsOf(allocation->host_data()), HasSubstr(" hg")) << sysfs;
    EXPECT_EQ(allocations->WithLabels({"shmem_thp"})->value(), counted + 1);
    // Reserved by faulting the pages into the daemon's mapping (fallocate
    // would leave them unmapped here).
    ASSERT_OK(allocation->WaitWritable(allocation->size()));
    EXPECT_GE(RssShmemKib(), resident + (allocation->size() >> 10)) << sysfs;
    const std::string payload = "weights!";
    std::atomic<bool> done{false};
    device.CopyFromHost(*allocation, (2 << 20) + 5, payload.data(),
                        payload.size(), [&](absl::Status status) {
                          EXPECT_OK(status);
                          done = true;
                        });
    ASSERT_OK(device.Synchronize());
    EXPECT_TRUE(done);
    ASSERT_OK(allocation->Seal());
    EXPECT_EQ(
        std::string(allocation->host_data() + (2 << 20) + 5, payload.size()),
        payload);
  }
}

TEST(HostDeviceTest, NeverSettingKeepsFourKibPagesUnadvised) {
  TempFile never("always within_size advise [never] deny force\n");
  HostDevice device(HostDeviceOptions{.huge_pages = false,
                                      .shmem_thp_setting = never.path()});
  ASSERT_OK_AND_ASSIGN(auto allocation, device.Allocate(3 << 20, "never"));
  EXPECT_EQ(allocation->size(), uint64_t{3} << 20);
  EXPECT_TRUE(allocation->PrefersCopies());
  const std::string flags = VmFlagsOf(allocation->host_data());
  EXPECT_THAT(flags, HasSubstr("VmFlags:"));
  EXPECT_THAT(flags, ::testing::Not(HasSubstr(" hg")));
}

}  // namespace
}  // namespace warmstart
