#include "daemon/device/cgroup_memory.h"

#include <sys/stat.h>

#include <fstream>
#include <limits>
#include <string>

#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;
using ::warmstart::testing::ShortTempDir;

constexpr uint64_t kGiB = uint64_t{1} << 30;

// A fake cgroup file system under a temporary directory.
class CgroupTree {
 public:
  std::string root() const { return dir_.Join("cgroup"); }
  std::string self() const { return dir_.Join("self_cgroup"); }

  void Self(const std::string& contents) { Write(self(), contents); }
  // Writes `value` to `file` in the directory `relative` under the root.
  void Set(const std::string& relative, const std::string& file,
           const std::string& value) {
    std::string path = root();
    MakeDirectory(path);
    for (size_t start = 0; start < relative.size();) {
      size_t end = relative.find('/', start);
      if (end == std::string::npos) end = relative.size();
      if (end > start) {
        path += "/" + relative.substr(start, end - start);
        MakeDirectory(path);
      }
      start = end + 1;
    }
    Write(path + "/" + file, value + "\n");
  }

 private:
  static void MakeDirectory(const std::string& path) {
    ::mkdir(path.c_str(), 0755);
  }
  static void Write(const std::string& path, const std::string& contents) {
    std::ofstream(path) << contents;
  }

  ShortTempDir dir_;
};

TEST(CgroupMemoryTest, ReadsAV2LimitAndShmemOnAUnifiedHost) {
  CgroupTree tree;
  tree.Self("0::/pod/daemon\n");
  tree.Set("pod/daemon", "memory.max", "max");
  tree.Set("pod/daemon", "memory.current", "100");
  tree.Set("pod/daemon", "memory.stat", "anon 5\nshmem 4096\nfile 7");
  tree.Set("pod/daemon", "cgroup.procs", "1234");
  // The pod's limit applies to the daemon's cgroup beneath it; its
  // inactive page cache does not count.
  tree.Set("pod", "memory.max", std::to_string(2 * kGiB));
  tree.Set("pod", "memory.current", std::to_string(kGiB));
  tree.Set("pod", "memory.stat",
           "inactive_file " + std::to_string(kGiB / 2) + "\n");
  ASSERT_OK_AND_ASSIGN(CgroupMemory memory,
                       ReadCgroupMemory(tree.root(), tree.self()));
  EXPECT_EQ(memory.limit, 2 * kGiB);
  EXPECT_EQ(memory.usage, kGiB / 2);
  EXPECT_EQ(memory.free(), 2 * kGiB - kGiB / 2);
  EXPECT_EQ(memory.limit_file, tree.root() + "/pod/memory.max");
  EXPECT_EQ(memory.shmem, 4096u);
}

TEST(CgroupMemoryTest, ReadsAV1LimitOfTheMemoryController) {
  // What the OOM kill had: a v1 limit of 1.75 GiB, which the old
  // check (v2 files only) never saw.
  CgroupTree tree;
  tree.Self("9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n");
  tree.Set("memory/process_api/abc", "memory.limit_in_bytes",
           std::to_string(7 * kGiB / 4));
  tree.Set("memory/process_api/abc", "memory.usage_in_bytes",
           std::to_string(kGiB));
  tree.Set("memory/process_api/abc", "memory.stat",
           "shmem 10\ntotal_shmem 8192\n");
  tree.Set("memory/process_api/abc", "cgroup.procs", "77");
  tree.Set("memory", "memory.limit_in_bytes", "9223372036854771712");
  tree.Set("memory", "memory.usage_in_bytes", std::to_string(30 * kGiB));
  ASSERT_OK_AND_ASSIGN(CgroupMemory memory,
                       ReadCgroupMemory(tree.root(), tree.self()));
  EXPECT_EQ(memory.limit, 7 * kGiB / 4);
  EXPECT_EQ(memory.free(), 3 * kGiB / 4);
  EXPECT_THAT(memory.limit_file,
              HasSubstr("memory/process_api/abc/memory.limit_in_bytes"));
  EXPECT_EQ(memory.shmem, 8192u);
}

TEST(CgroupMemoryTest, AHybridHostTakesTheTighterOfV1AndV2) {
  CgroupTree tree;
  tree.Self("4:memory:/a\n0::/b\n");
  tree.Set("memory/a", "memory.limit_in_bytes", std::to_string(4 * kGiB));
  tree.Set("memory/a", "memory.usage_in_bytes", std::to_string(kGiB));
  tree.Set("unified/b", "memory.max", std::to_string(2 * kGiB));
  tree.Set("unified/b", "memory.current", std::to_string(kGiB / 2));
  ASSERT_OK_AND_ASSIGN(CgroupMemory memory,
                       ReadCgroupMemory(tree.root(), tree.self()));
  EXPECT_EQ(memory.free(), 2 * kGiB - kGiB / 2);
  EXPECT_EQ(memory.limit_file, tree.root() + "/unified/b/memory.max");
}

TEST(CgroupMemoryTest, AContainerWithoutACgroupNamespaceReadsTheRoot) {
  // /proc/self/cgroup names a path the container cannot see: its own
  // cgroup is mounted as the root.
  CgroupTree tree;
  tree.Self("0::/kubepods/burstable/pod1/ctr\n");
  tree.Set("", "memory.max", std::to_string(kGiB));
  tree.Set("", "memory.current", std::to_string(kGiB / 4));
  ASSERT_OK_AND_ASSIGN(CgroupMemory memory,
                       ReadCgroupMemory(tree.root(), tree.self()));
  EXPECT_EQ(memory.limit, kGiB);
  EXPECT_EQ(memory.free(), 3 * kGiB / 4);
}

TEST(CgroupMemoryTest, NoLimitAnywhereIsUnlimited) {
  CgroupTree tree;
  tree.Self("0::/x\n");
  tree.Set("x", "memory.max", "max");
  tree.Set("x", "memory.current", "5");
  ASSERT_OK_AND_ASSIGN(CgroupMemory memory,
                       ReadCgroupMemory(tree.root(), tree.self()));
  EXPECT_EQ(memory.limit, 0u);
  EXPECT_EQ(memory.free(), std::numeric_limits<uint64_t>::max());
}

TEST(CgroupMemoryTest, ShmemOfACgroupSharedWithOtherProcessesIsUnknown) {
  CgroupTree tree;
  tree.Self("0::/shared\n");
  tree.Set("shared", "memory.stat", "shmem 4096\n");
  tree.Set("shared", "cgroup.procs", "1\n2\n");
  ASSERT_OK_AND_ASSIGN(CgroupMemory memory,
                       ReadCgroupMemory(tree.root(), tree.self()));
  EXPECT_EQ(memory.shmem, 0u);
}

TEST(CgroupMemoryTest, UsageOverTheLimitLeavesNothing) {
  CgroupTree tree;
  tree.Self("0::/x\n");
  tree.Set("x", "memory.max", "100");
  tree.Set("x", "memory.current", "150");
  ASSERT_OK_AND_ASSIGN(CgroupMemory memory,
                       ReadCgroupMemory(tree.root(), tree.self()));
  EXPECT_EQ(memory.free(), 0u);
}

TEST(CgroupMemoryTest, BadFilesGetErrorsNamingThem) {
  CgroupTree tree;
  EXPECT_THAT(ReadCgroupMemory(tree.root(), tree.self()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(tree.self())));
  tree.Self("0::/x\n");
  tree.Set("x", "memory.max", "lots");
  EXPECT_THAT(ReadCgroupMemory(tree.root(), tree.self()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("x/memory.max: expected a number")));
}

TEST(CgroupHugetlbTest, AV2PodWithoutHugepagesIsHeldToNone) {
  // Kubernetes sets hugetlb.2MB.max to the pod's hugepages-2Mi request:
  // 0 when it requests none, which is a limit, not its absence.
  CgroupTree tree;
  tree.Self("0::/pod/daemon\n");
  tree.Set("pod/daemon", "hugetlb.2MB.max", "max");
  tree.Set("pod/daemon", "hugetlb.2MB.current", "0");
  tree.Set("pod", "hugetlb.2MB.max", "0");
  tree.Set("pod", "hugetlb.2MB.current", "0");
  ASSERT_OK_AND_ASSIGN(CgroupMemory pages,
                       ReadCgroupHugetlb(tree.root(), tree.self()));
  EXPECT_TRUE(pages.has_limit);
  EXPECT_EQ(pages.free(), 0u);
  EXPECT_EQ(pages.limit_file, tree.root() + "/pod/hugetlb.2MB.max");
}

TEST(CgroupHugetlbTest, TheReservationLimitCountsAndTheTighterWins) {
  CgroupTree tree;
  tree.Self("0::/pod\n");
  tree.Set("pod", "hugetlb.2MB.max", std::to_string(8 * kGiB));
  tree.Set("pod", "hugetlb.2MB.current", std::to_string(kGiB));
  tree.Set("pod", "hugetlb.2MB.rsvd.max", std::to_string(4 * kGiB));
  tree.Set("pod", "hugetlb.2MB.rsvd.current", std::to_string(3 * kGiB));
  ASSERT_OK_AND_ASSIGN(CgroupMemory pages,
                       ReadCgroupHugetlb(tree.root(), tree.self()));
  EXPECT_EQ(pages.free(), kGiB);
  EXPECT_EQ(pages.limit_file, tree.root() + "/pod/hugetlb.2MB.rsvd.max");
}

TEST(CgroupHugetlbTest, ReadsAV1HugetlbControllerAndIgnoresMemory) {
  CgroupTree tree;
  tree.Self("7:hugetlb:/pod\n4:memory:/pod\n");
  tree.Set("hugetlb/pod", "hugetlb.2MB.limit_in_bytes",
           std::to_string(2 * kGiB));
  tree.Set("hugetlb/pod", "hugetlb.2MB.usage_in_bytes",
           std::to_string(kGiB / 2));
  tree.Set("memory/pod", "memory.limit_in_bytes", std::to_string(kGiB));
  tree.Set("memory/pod", "memory.usage_in_bytes", "0");
  ASSERT_OK_AND_ASSIGN(CgroupMemory pages,
                       ReadCgroupHugetlb(tree.root(), tree.self()));
  EXPECT_EQ(pages.free(), 2 * kGiB - kGiB / 2);
  EXPECT_EQ(pages.limit_file,
            tree.root() + "/hugetlb/pod/hugetlb.2MB.limit_in_bytes");
}

TEST(CgroupHugetlbTest, NoHugetlbControllerIsUnlimited) {
  CgroupTree tree;
  tree.Self("4:memory:/pod\n0::/\n");
  tree.Set("memory/pod", "memory.limit_in_bytes", std::to_string(kGiB));
  ASSERT_OK_AND_ASSIGN(CgroupMemory pages,
                       ReadCgroupHugetlb(tree.root(), tree.self()));
  EXPECT_FALSE(pages.has_limit);
  EXPECT_EQ(pages.free(), std::numeric_limits<uint64_t>::max());
}

}  // namespace
}  // namespace warmstart
