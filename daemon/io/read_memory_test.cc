#include "daemon/io/read_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace warmstart {
namespace {

constexpr uint64_t kPage = 4096;

// The VmFlags line of the smaps section holding `address`.
std::string VmFlagsOf(const char* address) {
  std::ifstream smaps("/proc/self/smaps");
  const uintptr_t wanted = reinterpret_cast<uintptr_t>(address);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    uintptr_t start = 0;
    uintptr_t end = 0;
    if (std::sscanf(line.c_str(), "%" SCNxPTR "-%" SCNxPTR, &start, &end) ==
        2) {
      inside = start <= wanted && wanted < end;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

// How many of the pages of [data, data + bytes) are resident.
size_t ResidentPages(const char* data, uint64_t bytes) {
  std::vector<unsigned char> residency(bytes / kPage);
  if (::mincore(const_cast<char*>(data), bytes, residency.data()) != 0) {
    return static_cast<size_t>(-1);
  }
  size_t resident = 0;
  for (unsigned char page : residency) resident += page & 1;
  return resident;
}

bool ThpInKernel() {
  return ::access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) == 0;
}

TEST(ReadMemoryTest, IsOnAHugePageBoundaryAndExactlyAsLarge) {
  for (uint64_t bytes :
       {kPage, uint64_t{3} << 20, (uint64_t{5} << 20) + kPage}) {
    absl::StatusOr<ReadMemory> memory = ReadMemory::Map(bytes);
    ASSERT_TRUE(memory.ok()) << memory.status();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(memory->data()) %
                  ReadMemory::kHugePageBytes,
              0u);
    EXPECT_EQ(memory->size(), bytes);
    // The padding that aligned it is unmapped on both sides.
    if (reinterpret_cast<uintptr_t>(memory->data()) >= kPage) {
      EXPECT_NE(::msync(memory->data() - kPage, kPage, MS_ASYNC), 0);
      EXPECT_EQ(errno, ENOMEM);
    }
    EXPECT_NE(::msync(memory->data() + ((bytes + kPage - 1) / kPage) * kPage,
                      kPage, MS_ASYNC),
              0);
  }
}

TEST(ReadMemoryTest, IsAdvisedForHugePagesWhereTheKernelHasThem) {
  absl::StatusOr<ReadMemory> memory = ReadMemory::Map(uint64_t{4} << 20);
  ASSERT_TRUE(memory.ok()) << memory.status();
  EXPECT_EQ(memory->advised(), ThpInKernel());
  const std::string flags = VmFlagsOf(memory->data());
  ASSERT_FALSE(flags.empty());
  // "hg": MADV_HUGEPAGE was given for this mapping.
  EXPECT_EQ(flags.find(" hg") != std::string::npos, ThpInKernel()) << flags;
}

TEST(ReadMemoryTest, NothingIsResidentUntilPopulated) {
  const uint64_t bytes = uint64_t{4} << 20;
  absl::StatusOr<ReadMemory> memory = ReadMemory::Map(bytes);
  ASSERT_TRUE(memory.ok()) << memory.status();
  EXPECT_EQ(ResidentPages(memory->data(), bytes), 0u);
  memory->Populate(0, bytes / 2);
  EXPECT_EQ(ResidentPages(memory->data(), bytes / 2), bytes / 2 / kPage);
  memory->Populate(bytes / 2, bytes / 2);
  EXPECT_EQ(ResidentPages(memory->data(), bytes), bytes / kPage);
  // Writable everywhere.
  memory->data()[bytes - 1] = 7;
  EXPECT_EQ(memory->data()[bytes - 1], 7);
}

TEST(ReadMemoryTest, CountsItsHugePagesFromSmaps) {
  const uint64_t bytes = uint64_t{4} << 20;
  absl::StatusOr<ReadMemory> memory = ReadMemory::Map(bytes);
  ASSERT_TRUE(memory.ok()) << memory.status();
  std::optional<uint64_t> before = memory->HugePageBytes();
  ASSERT_TRUE(before.has_value());
  EXPECT_EQ(*before, 0u);
  memory->Populate(0, bytes);
  std::optional<uint64_t> after = memory->HugePageBytes();
  ASSERT_TRUE(after.has_value());
  // Whether the kernel found free 2 MiB pages depends on the machine; what
  // is counted is whole huge pages of this mapping.
  EXPECT_LE(*after, bytes);
  EXPECT_EQ(*after % ReadMemory::kHugePageBytes, 0u);
}

TEST(ReadMemoryTest, MovingHandsOverTheMappingAndDestructionUnmapsIt) {
  absl::StatusOr<ReadMemory> memory = ReadMemory::Map(uint64_t{2} << 20);
  ASSERT_TRUE(memory.ok()) << memory.status();
  char* const data = memory->data();
  ReadMemory moved = *std::move(memory);
  EXPECT_EQ(moved.data(), data);
  {
    ReadMemory taken = std::move(moved);
    EXPECT_EQ(moved.data(), nullptr);
    EXPECT_EQ(moved.size(), 0u);
    EXPECT_EQ(::msync(data, kPage, MS_ASYNC), 0);
  }
  EXPECT_NE(::msync(data, kPage, MS_ASYNC), 0);
  EXPECT_EQ(errno, ENOMEM);
}

}  // namespace
}  // namespace warmstart
