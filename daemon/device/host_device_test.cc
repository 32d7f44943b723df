#include "daemon/device/host_device.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/testing/status_matchers.h"
#include "daemon/base/metrics.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;

TEST(HostDeviceTest, AllocationIsZeroedWritableAndExportedAsMemfd) {
  HostDevice device(HostDeviceOptions{});
  ASSERT_OK_AND_ASSIGN(auto allocation, device.Allocate(10000, "model-a"));
  EXPECT_GE(allocation->size(), 10000u);
  char* data = allocation->host_data();
  ASSERT_NE(data, nullptr);
  for (uint64_t i = 0; i < allocation->size(); ++i) ASSERT_EQ(data[i], 0) << i;

  const std::string payload = "weights!";
  bool done = false;
  device.CopyFromHost(*allocation, 4096, payload.data(), payload.size(),
                      [&](absl::Status status) {
                        EXPECT_OK(status);
                        done = true;
                      });
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
  HostDevice device(HostDeviceOptions{.huge_pages = false});
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
    bool done = false;
    device.CopyFromHost(*allocation, offset, source.data() + offset, bytes,
                        [&](absl::Status status) {
                          EXPECT_OK(status);
                          done = true;
                        });
    EXPECT_TRUE(done);
  }
  // The pages were filled without being mapped into this process.
  EXPECT_LT(RssShmemKib(), before + (kBytes >> 10) / 4);
  EXPECT_EQ(std::memcmp(allocation->host_data(), source.data(), kBytes), 0);
  ASSERT_OK(allocation->Seal());
}

TEST(HostDeviceTest, WritingThroughTheMappingStaysAvailable) {
  HostDevice device(
      HostDeviceOptions{.huge_pages = false, .write_through_fd = false});
  ASSERT_OK_AND_ASSIGN(auto allocation, device.Allocate(1 << 20, "mapped"));
  EXPECT_FALSE(allocation->PrefersCopies());
  const std::string payload = "weights!";
  bool done = false;
  device.CopyFromHost(*allocation, 5000, payload.data(), payload.size(),
                      [&](absl::Status status) {
                        EXPECT_OK(status);
                        done = true;
                      });
  EXPECT_TRUE(done);
  EXPECT_EQ(std::string(allocation->host_data() + 5000, payload.size()),
            payload);
}

}  // namespace
}  // namespace warmstart
