#include "daemon/io/read_engine.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_env.h"
#include "daemon/base/metrics.h"
#include "daemon/io/read_file.h"
#include "daemon/io/uring_engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/doubles/fault_injecting_engine.h"

namespace warmstart {
namespace {

using ::warmstart::testing::FaultInjectingEngine;

using ::testing::HasSubstr;
using Kind = ReadEngineOptions::Kind;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

// status_matchers.h has no IsOkAndHolds; reads need only this one.
MATCHER_P(ReadBytes, expected,
          "is OK with " + ::testing::PrintToString(expected) + " bytes") {
  if (!arg.ok()) {
    *result_listener << "status: " << arg.status();
    return false;
  }
  *result_listener << *arg << " bytes";
  return *arg == static_cast<uint64_t>(expected);
}

uint64_t CounterValue(const std::string& name) {
  return Metrics::Global().Snapshot()[name];
}

// Page-aligned memory, as the staging pool hands out.
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t size)
      : data_(static_cast<char*>(std::aligned_alloc(kDirectAlignment, size))),
        size_(size) {
    std::memset(data_.get(), 0xAB, size_);
  }
  char* data() const { return data_.get(); }
  size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> data_;
  size_t size_;
};

std::string RandomBytes(size_t size, std::mt19937_64& random) {
  std::string bytes(size, '\0');
  for (char& c : bytes) c = static_cast<char>(random());
  return bytes;
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary);
  out << contents;
  out.close();
  ASSERT_TRUE(out.good()) << path;
}

// Submits one read and waits for it.
absl::StatusOr<uint64_t> ReadOnce(ReadEngine& engine,
                                  const ReadRequest& request) {
  absl::StatusOr<uint64_t> result = absl::UnknownError("callback never ran");
  engine.Submit(request, [&result](absl::StatusOr<uint64_t> r) {
    result = std::move(r);
  });
  engine.Drain();
  return result;
}

// Compares `size` bytes without printing them all on failure.
::testing::AssertionResult SameBytes(const char* actual, const char* expected,
                                     size_t size) {
  for (size_t i = 0; i < size; ++i) {
    if (actual[i] != expected[i]) {
      return ::testing::AssertionFailure()
             << "bytes differ first at " << i << " of " << size;
    }
  }
  return ::testing::AssertionSuccess();
}

// The bytes a read of `length` at `offset` must deliver from `contents`.
uint64_t ExpectedBytes(const std::string& contents, uint64_t offset,
                       uint64_t length) {
  if (offset >= contents.size()) return 0;
  return std::min<uint64_t>(length, contents.size() - offset);
}

bool IoUringWorksHere() { return UringEngine::Create(1).ok(); }

// Temporary files and engines of one kind; io_uring tests skip where the
// kernel or sandbox refuses io_uring.
class EngineTestBase : public ::testing::Test {
 protected:
  explicit EngineTestBase(Kind kind) : kind_(kind) {}

  void SetUp() override {
    if (kind_ == Kind::kIoUring && !IoUringWorksHere()) {
      GTEST_SKIP() << "io_uring cannot be set up here: "
                   << UringEngine::Create(1).status();
    }
    random_.seed(testing::TestSeed());
  }

  std::unique_ptr<ReadEngine> MakeEngine(unsigned queue_depth = 8) {
    ReadEngineOptions options;
    options.kind = kind_;
    options.queue_depth = queue_depth;
    options.pread_threads = 3;
    absl::StatusOr<std::unique_ptr<ReadEngine>> engine =
        CreateReadEngine(options);
    EXPECT_OK(engine);
    return engine.ok() ? std::move(*engine) : nullptr;
  }

  std::unique_ptr<FaultInjectingEngine> MakeFaultyEngine(
      FaultInjectingEngine::Options options, unsigned queue_depth = 8) {
    return std::make_unique<FaultInjectingEngine>(MakeEngine(queue_depth),
                                                  std::move(options));
  }

  // Writes `size` random bytes to a new file and returns its contents.
  std::string MakeFile(const std::string& name, size_t size) {
    std::string contents = RandomBytes(size, random_);
    WriteFile(dir_.Join(name), contents);
    return contents;
  }

  const Kind kind_;
  testing::ShortTempDir dir_;
  std::mt19937_64 random_;
};

// Runs for both engines.
class ReadEngineTest : public EngineTestBase,
                       public ::testing::WithParamInterface<Kind> {
 protected:
  ReadEngineTest() : EngineTestBase(GetParam()) {}
};

class UringEngineTest : public EngineTestBase {
 protected:
  UringEngineTest() : EngineTestBase(Kind::kIoUring) {}
};

TEST_P(ReadEngineTest, NameMatchesKind) {
  EXPECT_EQ(MakeEngine()->name(),
            GetParam() == Kind::kIoUring ? "io_uring" : "pread");
}

TEST_P(ReadEngineTest, RandomRangesOfSeveralFilesMatchTheirBytes) {
  const std::vector<size_t> sizes = {1 * kMiB + 123, 2 * kMiB + 4095,
                                     512 * kKiB};
  std::vector<std::string> contents;
  std::vector<ReadFile> files;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const std::string name = absl::StrCat("f", i);
    contents.push_back(MakeFile(name, sizes[i]));
    ASSERT_OK_AND_ASSIGN(ReadFile file, OpenReadFile(dir_.Join(name), false));
    files.push_back(std::move(file));
  }
  auto engine = MakeEngine();
  constexpr int kReads = 300;
  std::vector<ReadRequest> requests(kReads);
  std::vector<std::string> destinations(kReads);
  std::vector<absl::StatusOr<uint64_t>> results(kReads);
  std::vector<size_t> file_of(kReads);
  for (int i = 0; i < kReads; ++i) {
    file_of[i] = random_() % files.size();
    const uint64_t length = random_() % (200 * kKiB);
    destinations[i].assign(length, '\xAB');
    // Some ranges start past the end of the file.
    requests[i] = ReadRequest{files[file_of[i]].fd.get(),
                              random_() % (sizes[file_of[i]] + 8192), length,
                              destinations[i].data(), files[file_of[i]].path};
    engine->Submit(requests[i], [&results, i](absl::StatusOr<uint64_t> r) {
      results[i] = std::move(r);
    });
  }
  engine->Drain();
  for (int i = 0; i < kReads; ++i) {
    const std::string& expected = contents[file_of[i]];
    const uint64_t want =
        ExpectedBytes(expected, requests[i].offset, requests[i].length);
    ASSERT_OK(results[i]);
    ASSERT_EQ(*results[i], want) << "read " << i;
    ASSERT_TRUE(SameBytes(destinations[i].data(),
                          expected.data() + requests[i].offset, want))
        << "read " << i;
    const std::string untouched(requests[i].length - want, '\xAB');
    ASSERT_TRUE(SameBytes(destinations[i].data() + want, untouched.data(),
                          untouched.size()))
        << "read " << i << " wrote past what it reported";
  }
}

TEST_P(ReadEngineTest, DirectReadsOfAlignedSupersetsIntoRegisteredBuffers) {
  const std::string contents = MakeFile("direct", 2 * kMiB + 1000);
  ASSERT_OK_AND_ASSIGN(ReadFile file, OpenReadFile(dir_.Join("direct"), true));
  if (!file.direct) GTEST_SKIP() << dir_.path() << " refuses O_DIRECT";
  auto engine = MakeEngine();
  // The first half is registered, the second is not.
  constexpr size_t kHalf = 1 * kMiB;
  AlignedBuffer memory(2 * kHalf);
  const iovec registered = {memory.data(), kHalf};
  ASSERT_OK(engine->RegisterBuffers({&registered, 1}));

  constexpr size_t kSlot = 64 * kKiB;
  constexpr size_t kSlots = 2 * kHalf / kSlot;
  for (int round = 0; round < 8; ++round) {
    std::vector<uint64_t> offsets(kSlots), lengths(kSlots);
    std::vector<ReadRequest> requests(kSlots);
    std::vector<absl::StatusOr<uint64_t>> results(kSlots);
    for (size_t slot = 0; slot < kSlots; ++slot) {
      offsets[slot] = random_() % contents.size();
      // Fits a slot once aligned.
      lengths[slot] = std::min<uint64_t>(1 + random_() % (kSlot - 8192),
                                         contents.size() - offsets[slot]);
      const AlignedRange aligned = AlignForDirect(offsets[slot], lengths[slot]);
      requests[slot] = ReadRequest{file.fd.get(), aligned.aligned_offset,
                                   aligned.aligned_length,
                                   memory.data() + slot * kSlot, file.path};
      engine->Submit(requests[slot],
                     [&results, slot](absl::StatusOr<uint64_t> r) {
                       results[slot] = std::move(r);
                     });
    }
    engine->Drain();
    for (size_t slot = 0; slot < kSlots; ++slot) {
      ASSERT_OK(results[slot]);
      ASSERT_EQ(*results[slot], ExpectedBytes(contents, requests[slot].offset,
                                              requests[slot].length));
      const AlignedRange aligned = AlignForDirect(offsets[slot], lengths[slot]);
      ASSERT_OK(CheckReadCovers(requests[slot], *results[slot],
                                aligned.lead + lengths[slot]));
      ASSERT_TRUE(SameBytes(requests[slot].destination + aligned.lead,
                            contents.data() + offsets[slot], lengths[slot]))
          << "round " << round << " slot " << slot;
    }
  }
  // A destination that runs past the end of the registered buffer.
  ASSERT_OK_AND_ASSIGN(
      uint64_t straddling,
      ReadOnce(*engine, ReadRequest{file.fd.get(), 8192, 16384,
                                    memory.data() + kHalf - 8192, file.path}));
  EXPECT_EQ(straddling, 16384u);
  EXPECT_TRUE(
      SameBytes(memory.data() + kHalf - 8192, contents.data() + 8192, 16384));
}

TEST_P(ReadEngineTest, ReadCrossingTheEndReturnsTheShortCount) {
  const std::string contents = MakeFile("short", 3 * 4096 + 1000);
  auto engine = MakeEngine();
  ASSERT_OK_AND_ASSIGN(ReadFile buffered,
                       OpenReadFile(dir_.Join("short"), false));
  std::string destination(5000, '\0');
  EXPECT_THAT(
      ReadOnce(*engine, ReadRequest{buffered.fd.get(), contents.size() - 1000,
                                    5000, destination.data(), "short"}),
      ReadBytes(1000u));
  EXPECT_TRUE(SameBytes(destination.data(),
                        contents.data() + contents.size() - 1000, 1000));

  ASSERT_OK_AND_ASSIGN(ReadFile direct, OpenReadFile(dir_.Join("short"), true));
  if (!direct.direct) GTEST_SKIP() << dir_.path() << " refuses O_DIRECT";
  AlignedBuffer memory(4 * 4096);
  EXPECT_THAT(ReadOnce(*engine, ReadRequest{direct.fd.get(), 0, 4 * 4096,
                                            memory.data(), "short"}),
              ReadBytes(contents.size()));
  EXPECT_TRUE(SameBytes(memory.data(), contents.data(), contents.size()));
  EXPECT_THAT(ReadOnce(*engine, ReadRequest{direct.fd.get(), 3 * 4096, 4096,
                                            memory.data(), "short"}),
              ReadBytes(1000u));
}

TEST_P(ReadEngineTest, ReadAtOrPastTheEndReturnsZeroBytes) {
  const std::string contents = MakeFile("end", 8192 + 100);
  auto engine = MakeEngine();
  AlignedBuffer memory(4096);
  for (bool want_direct : {false, true}) {
    ASSERT_OK_AND_ASSIGN(ReadFile file,
                         OpenReadFile(dir_.Join("end"), want_direct));
    for (uint64_t offset : {uint64_t{3 * 4096}, uint64_t{1} << 40}) {
      EXPECT_THAT(ReadOnce(*engine, ReadRequest{file.fd.get(), offset, 4096,
                                                memory.data(), "end"}),
                  ReadBytes(0u));
    }
  }
  ASSERT_OK_AND_ASSIGN(ReadFile file, OpenReadFile(dir_.Join("end"), false));
  EXPECT_THAT(ReadOnce(*engine, ReadRequest{file.fd.get(), contents.size(), 100,
                                            memory.data(), "end"}),
              ReadBytes(0u));
  EXPECT_THAT(
      ReadOnce(*engine, ReadRequest{file.fd.get(), 5, 0, memory.data(), "end"}),
      ReadBytes(0u));
}

TEST_P(ReadEngineTest, KernelErrorNamesFileAndOffsetAndOtherReadsComplete) {
  const std::string contents = MakeFile("good", 9 * 8192);
  ASSERT_OK_AND_ASSIGN(ReadFile good, OpenReadFile(dir_.Join("good"), false));
  // Reading a directory fails with EISDIR.
  const int directory = ::open(dir_.path().c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(directory, 0);
  auto engine = MakeEngine();
  std::vector<std::string> destinations(9, std::string(8192, '\0'));
  std::vector<absl::StatusOr<uint64_t>> results(9);
  for (int i = 0; i < 9; ++i) {
    const ReadRequest request =
        i == 4 ? ReadRequest{directory, 4096, 8192, destinations[i].data(),
                             "the-directory"}
               : ReadRequest{good.fd.get(), uint64_t(i) * 8192, 8192,
                             destinations[i].data(), good.path};
    engine->Submit(request, [&results, i](absl::StatusOr<uint64_t> r) {
      results[i] = std::move(r);
    });
  }
  engine->Drain();
  ::close(directory);
  for (int i = 0; i < 9; ++i) {
    if (i == 4) {
      EXPECT_THAT(results[i],
                  StatusIs(absl::StatusCode::kInvalidArgument,
                           ::testing::AllOf(HasSubstr("the-directory"),
                                            HasSubstr("offset 4096"),
                                            HasSubstr("Is a directory"))));
    } else {
      EXPECT_THAT(results[i], ReadBytes(8192u));
      EXPECT_TRUE(
          SameBytes(destinations[i].data(), contents.data() + i * 8192, 8192));
    }
  }
}

TEST_P(ReadEngineTest, InjectedEioAtTheNthReadIsDataLossNamingFileAndOffset) {
  const std::string contents = MakeFile("eio", 12 * 64 * kKiB);
  ASSERT_OK_AND_ASSIGN(ReadFile file, OpenReadFile(dir_.Join("eio"), false));
  FaultInjectingEngine::Options options;
  options.fail_read = 5;
  auto engine = MakeFaultyEngine(options);
  std::vector<std::string> destinations(12, std::string(64 * kKiB, '\0'));
  std::vector<absl::StatusOr<uint64_t>> results(12);
  for (int i = 0; i < 12; ++i) {
    engine->Submit(ReadRequest{file.fd.get(), i * 64 * kKiB, 64 * kKiB,
                               destinations[i].data(), file.path},
                   [&results, i](absl::StatusOr<uint64_t> r) {
                     results[i] = std::move(r);
                   });
  }
  engine->Drain();
  EXPECT_EQ(engine->reads(), 12u);
  for (int i = 0; i < 12; ++i) {
    if (i == 4) {
      EXPECT_THAT(results[i],
                  StatusIs(absl::StatusCode::kDataLoss,
                           ::testing::AllOf(HasSubstr(file.path),
                                            HasSubstr("at offset 262144"),
                                            HasSubstr("Input/output error"))));
    } else {
      EXPECT_THAT(results[i], ReadBytes(64 * kKiB));
      EXPECT_TRUE(SameBytes(destinations[i].data(),
                            contents.data() + i * 64 * kKiB, 64 * kKiB));
    }
  }
}

TEST_P(ReadEngineTest, ShortReadsAreResubmittedAndGiveTheRightBytes) {
  const std::string contents = MakeFile("pieces", 1 * kMiB + 777);
  for (bool want_direct : {false, true}) {
    ASSERT_OK_AND_ASSIGN(ReadFile file,
                         OpenReadFile(dir_.Join("pieces"), want_direct));
    FaultInjectingEngine::Options options;
    // Pieces of O_DIRECT reads must stay aligned.
    options.max_bytes_per_read = file.direct ? 8192 : 4096 * 3 + 17;
    auto engine = MakeFaultyEngine(options);
    constexpr int kReads = 40;
    AlignedBuffer memory(kReads * 128 * kKiB);
    std::vector<ReadRequest> requests(kReads);
    std::vector<absl::StatusOr<uint64_t>> results(kReads);
    for (int i = 0; i < kReads; ++i) {
      uint64_t offset = random_() % (contents.size() + 4096);
      uint64_t length = random_() % (128 * kKiB);
      if (file.direct) {
        const AlignedRange aligned = AlignForDirect(offset, length);
        offset = aligned.aligned_offset;
        length = std::min<uint64_t>(aligned.aligned_length, 128 * kKiB);
      }
      requests[i] = ReadRequest{file.fd.get(), offset, length,
                                memory.data() + i * 128 * kKiB, file.path};
      engine->Submit(requests[i], [&results, i](absl::StatusOr<uint64_t> r) {
        results[i] = std::move(r);
      });
    }
    engine->Drain();
    EXPECT_GT(engine->reads(), uint64_t{kReads});
    for (int i = 0; i < kReads; ++i) {
      const uint64_t want =
          ExpectedBytes(contents, requests[i].offset, requests[i].length);
      ASSERT_THAT(results[i], ReadBytes(want))
          << "read " << i << " direct " << file.direct;
      ASSERT_TRUE(SameBytes(requests[i].destination,
                            contents.data() + requests[i].offset, want))
          << "read " << i << " direct " << file.direct;
    }
  }
}

TEST_P(ReadEngineTest, FileTruncatedDuringTheLoadGivesShortReadsAndDataLoss) {
  constexpr uint64_t kPiece = 64 * kKiB;
  constexpr int kReads = 64;
  const std::string contents = MakeFile("truncated", kReads * kPiece);
  const std::string path = dir_.Join("truncated");
  ASSERT_OK_AND_ASSIGN(ReadFile file, OpenReadFile(path, true));
  // Reads before the 30th lie wholly before the new end, so their outcome
  // does not depend on which were still in flight when the file shrank.
  constexpr uint64_t kNewSize = 29 * kPiece + 1000;
  FaultInjectingEngine::Options options;
  options.action_before_read = 30;
  options.action = [&path] {
    ASSERT_EQ(::truncate(path.c_str(), kNewSize), 0);
  };
  auto engine = MakeFaultyEngine(options);
  AlignedBuffer memory(kReads * kPiece);
  std::vector<ReadRequest> requests(kReads);
  std::vector<absl::StatusOr<uint64_t>> results(kReads);
  for (int i = 0; i < kReads; ++i) {
    requests[i] = ReadRequest{file.fd.get(), i * kPiece, kPiece,
                              memory.data() + i * kPiece, file.path};
    engine->Submit(requests[i], [&results, i](absl::StatusOr<uint64_t> r) {
      results[i] = std::move(r);
    });
  }
  engine->Drain();
  for (int i = 0; i < kReads; ++i) {
    const uint64_t want = i < 29 ? kPiece : i == 29 ? 1000 : 0;
    ASSERT_THAT(results[i], ReadBytes(want)) << "read " << i;
    ASSERT_TRUE(
        SameBytes(requests[i].destination, contents.data() + i * kPiece, want));
  }
  EXPECT_OK(CheckReadCovers(requests[28], *results[28], kPiece));
  EXPECT_THAT(CheckReadCovers(requests[29], *results[29], kPiece),
              StatusIs(absl::StatusCode::kDataLoss,
                       ::testing::AllOf(
                           HasSubstr(path),
                           HasSubstr(absl::StrCat("ends at offset ", kNewSize)),
                           HasSubstr("truncated"))));
}

TEST_P(ReadEngineTest, QueueDepthBoundsReadsInFlight) {
  const std::string contents = MakeFile("depth", 24 * 4096);
  ASSERT_OK_AND_ASSIGN(ReadFile file, OpenReadFile(dir_.Join("depth"), false));
  FaultInjectingEngine::Options options;
  options.completion_delay = absl::Milliseconds(10);
  constexpr unsigned kDepth = 4;
  auto engine = MakeFaultyEngine(options, kDepth);
  // Several submitting threads, each with its own destinations.
  constexpr int kThreads = 4;
  constexpr int kReadsPerThread = 6;
  std::vector<std::string> destinations(kThreads * kReadsPerThread,
                                        std::string(4096, '\0'));
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kReadsPerThread; ++i) {
        const int n = t * kReadsPerThread + i;
        engine->Submit(ReadRequest{file.fd.get(), uint64_t(n) * 4096, 4096,
                                   destinations[n].data(), file.path},
                       [&ok](absl::StatusOr<uint64_t> r) {
                         if (r.ok() && *r == 4096) ++ok;
                       });
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  engine->Drain();
  EXPECT_EQ(ok.load(), kThreads * kReadsPerThread);
  // Slow completions pile reads up against the bound; how close they come
  // depends on scheduling, so only the bound itself is exact.
  EXPECT_LE(engine->max_in_flight(), int64_t{kDepth});
  EXPECT_GE(engine->max_in_flight(), 2);
  for (int n = 0; n < kThreads * kReadsPerThread; ++n) {
    ASSERT_TRUE(
        SameBytes(destinations[n].data(), contents.data() + n * 4096, 4096));
  }
}

TEST_P(ReadEngineTest, DrainWaitsForEveryCallback) {
  MakeFile("drain", 64 * kKiB);
  ASSERT_OK_AND_ASSIGN(ReadFile file, OpenReadFile(dir_.Join("drain"), false));
  FaultInjectingEngine::Options options;
  options.completion_delay = absl::Milliseconds(10);
  auto engine = MakeFaultyEngine(options);
  std::string destination(16 * 4096, '\0');
  std::atomic<int> done{0};
  for (int i = 0; i < 16; ++i) {
    engine->Submit(ReadRequest{file.fd.get(), uint64_t(i) * 4096, 4096,
                               destination.data() + i * 4096, file.path},
                   [&done](absl::StatusOr<uint64_t>) {
                     absl::SleepFor(absl::Milliseconds(1));
                     ++done;
                   });
  }
  engine->Drain();
  EXPECT_EQ(done.load(), 16);
  engine->Drain();  // Nothing in flight: returns at once.
}

TEST_P(ReadEngineTest, DestroyingTheEngineWaitsForReadsInFlight) {
  const std::string contents = MakeFile("destroy", 64 * kKiB);
  ASSERT_OK_AND_ASSIGN(ReadFile file,
                       OpenReadFile(dir_.Join("destroy"), false));
  std::string destination(contents.size(), '\0');
  std::atomic<int> done{0};
  {
    FaultInjectingEngine::Options options;
    options.completion_delay = absl::Milliseconds(5);
    auto engine = MakeFaultyEngine(options);
    for (int i = 0; i < 16; ++i) {
      engine->Submit(ReadRequest{file.fd.get(), uint64_t(i) * 4096, 4096,
                                 destination.data() + i * 4096, file.path},
                     [&done](absl::StatusOr<uint64_t> r) {
                       if (r.ok()) ++done;
                     });
    }
  }
  EXPECT_EQ(done.load(), 16);
  EXPECT_EQ(destination, contents);
  // An engine that never read anything also goes away cleanly.
  MakeEngine();
}

TEST_F(UringEngineTest, RegisterBuffersOnceUntilUnregistered) {
  MakeFile("late", 4096);
  ASSERT_OK_AND_ASSIGN(ReadFile file, OpenReadFile(dir_.Join("late"), false));
  auto engine = MakeEngine();
  AlignedBuffer memory(4096);
  ASSERT_OK(ReadOnce(
      *engine, ReadRequest{file.fd.get(), 0, 4096, memory.data(), file.path}));
  const iovec buffer = {memory.data(), memory.size()};
  // After a read: the engine thread stops for the registration.
  ASSERT_OK(engine->RegisterBuffers({&buffer, 1}));
  EXPECT_THAT(engine->RegisterBuffers({&buffer, 1}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("registered already")));
  engine->UnregisterBuffers();
  engine->UnregisterBuffers();  // Nothing left: a no-op.
  ASSERT_OK(engine->RegisterBuffers({&buffer, 1}));
  EXPECT_THAT(ReadOnce(*engine, ReadRequest{file.fd.get(), 0, 4096,
                                            memory.data(), file.path}),
              ReadBytes(4096));
}

TEST_F(UringEngineTest, UnregisteredBuffersReleaseTheRingsPages) {
  const std::string contents = MakeFile("released", 4096);
  ASSERT_OK_AND_ASSIGN(ReadFile file,
                       OpenReadFile(dir_.Join("released"), false));
  auto engine = MakeEngine();
  void* const region = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(region, MAP_FAILED);
  char* const memory = static_cast<char*>(region);
  const iovec buffer = {memory, 4096};
  ASSERT_OK(engine->RegisterBuffers({&buffer, 1}));
  ASSERT_THAT(
      ReadOnce(*engine, ReadRequest{file.fd.get(), 0, 4096, memory, file.path}),
      ReadBytes(4096));
  engine->UnregisterBuffers();
  // Fresh pages mapped over the old ones: with the registration gone, a
  // read lands in them (a registered buffer would land in the pinned pages,
  // out of this mapping's sight; see the next test).
  ASSERT_EQ(::mmap(memory, 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0),
            region);
  EXPECT_THAT(
      ReadOnce(*engine, ReadRequest{file.fd.get(), 0, 4096, memory, file.path}),
      ReadBytes(4096));
  EXPECT_TRUE(SameBytes(memory, contents.data(), 4096));
  // The kernel let go of the old registration: a new one takes (it would
  // answer EBUSY otherwise, and reads would silently go unregistered), and
  // reads go through its pinned pages again, out of a fresh mapping's sight.
  ASSERT_OK(engine->RegisterBuffers({&buffer, 1}));
  ASSERT_EQ(::mmap(memory, 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0),
            region);
  EXPECT_THAT(
      ReadOnce(*engine, ReadRequest{file.fd.get(), 0, 4096, memory, file.path}),
      ReadBytes(4096));
  EXPECT_TRUE(SameBytes(memory, std::string(4096, '\0').data(), 4096));
  engine.reset();
  ::munmap(region, 4096);
}

TEST_F(UringEngineTest, ReadsIntoRegisteredBuffersGoThroughTheRingsPages) {
  const std::string contents = MakeFile("fixed", 4096);
  ASSERT_OK_AND_ASSIGN(ReadFile file, OpenReadFile(dir_.Join("fixed"), false));
  auto engine = MakeEngine();
  void* const region = ::mmap(nullptr, 2 * 4096, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(region, MAP_FAILED);
  char* const registered = static_cast<char*>(region);
  const iovec buffer = {registered, 4096};
  ASSERT_OK(engine->RegisterBuffers({&buffer, 1}));
  // The ring keeps the pages it pinned at registration. Mapping fresh pages
  // over them shows which reads go through the registered buffer: those land
  // in the pinned pages, out of this mapping's sight; others land here.
  ASSERT_EQ(::mmap(registered, 2 * 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0),
            region);
  EXPECT_THAT(ReadOnce(*engine, ReadRequest{file.fd.get(), 0, 4096, registered,
                                            file.path}),
              ReadBytes(4096));
  EXPECT_TRUE(SameBytes(registered, std::string(4096, '\0').data(), 4096));
  EXPECT_THAT(ReadOnce(*engine, ReadRequest{file.fd.get(), 0, 4096,
                                            registered + 4096, file.path}),
              ReadBytes(4096));
  EXPECT_TRUE(SameBytes(registered + 4096, contents.data(), 4096));
  engine.reset();
  ::munmap(region, 2 * 4096);
}

INSTANTIATE_TEST_SUITE_P(Engines, ReadEngineTest,
                         ::testing::Values(Kind::kIoUring, Kind::kPread),
                         [](const ::testing::TestParamInfo<Kind>& info) {
                           return info.param == Kind::kIoUring ? "IoUring"
                                                               : "Pread";
                         });

TEST(CreateReadEngineTest, RejectsOptionsOutOfRange) {
  for (auto [depth, threads] : {std::pair<unsigned, unsigned>{0, 4},
                                {kMaxQueueDepth + 1, 4},
                                {8, 0},
                                {8, kMaxPreadThreads + 1}}) {
    ReadEngineOptions options;
    options.queue_depth = depth;
    options.pread_threads = threads;
    EXPECT_THAT(CreateReadEngine(options),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("expected 1 to")));
  }
}

TEST(CreateReadEngineTest, PreadWhenAskedFor) {
  ReadEngineOptions options;
  options.kind = Kind::kPread;
  ASSERT_OK_AND_ASSIGN(auto engine, CreateReadEngine(options));
  EXPECT_EQ(engine->name(), "pread");
}

TEST(CreateReadEngineTest, AutoPicksIoUringWhereItWorks) {
  if (!IoUringWorksHere()) GTEST_SKIP() << "io_uring cannot be set up here";
  const uint64_t fallbacks = CounterValue("warmstart_io_uring_fallback_total");
  ASSERT_OK_AND_ASSIGN(auto engine, CreateReadEngine(ReadEngineOptions()));
  EXPECT_EQ(engine->name(), "io_uring");
  EXPECT_EQ(CounterValue("warmstart_io_uring_fallback_total"), fallbacks);
}

// The death tests below run their body in a forked child (gtest runs
// *DeathTest suites first, while the process has one thread), so that the
// seccomp filter and the lowered limits stay in the child. The child exits
// with 0 when every check passed, else prints what failed.

int Fail(const std::string& what) {
  std::fprintf(stderr, "child check failed: %s\n", what.c_str());
  return 1;
}

// What Docker's and containerd's default seccomp profiles do.
bool BlockIoUringSetup() {
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog program = {sizeof(filter) / sizeof(filter[0]), filter};
  return ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) == 0;
}

int FallBackUnderSeccomp() {
  if (!BlockIoUringSetup()) return Fail("installing the seccomp filter");
  const uint64_t before = CounterValue("warmstart_io_uring_fallback_total");
  absl::StatusOr<std::unique_ptr<ReadEngine>> engine =
      CreateReadEngine(ReadEngineOptions());
  if (!engine.ok()) return Fail(engine.status().ToString());
  if ((*engine)->name() != "pread") return Fail("the engine is not pread");
  if (CounterValue("warmstart_io_uring_fallback_total") != before + 1) {
    return Fail("the fallback was not counted once");
  }
  ReadEngineOptions forced;
  forced.kind = Kind::kIoUring;
  const absl::Status status = CreateReadEngine(forced).status();
  if (status.code() != absl::StatusCode::kFailedPrecondition ||
      status.message().find("io_uring_queue_init") == absl::string_view::npos ||
      status.message().find("errno 1") == absl::string_view::npos) {
    return Fail(absl::StrCat("forced io_uring: ", status.ToString()));
  }
  return 0;
}

TEST(CreateReadEngineDeathTest, FallsBackToPreadWhenSeccompBlocksIoUring) {
  EXPECT_EXIT(::_exit(FallBackUnderSeccomp()), ::testing::ExitedWithCode(0),
              "");
}

// Root holds CAP_IPC_LOCK, which exempts it from the locked-memory limit.
bool DropIpcLock() {
  __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2];
  if (::syscall(SYS_capget, &header, data) != 0) return false;
  data[CAP_IPC_LOCK / 32].effective &= ~(1u << (CAP_IPC_LOCK % 32));
  data[CAP_IPC_LOCK / 32].permitted &= ~(1u << (CAP_IPC_LOCK % 32));
  return ::syscall(SYS_capset, &header, data) == 0;
}

int ReadUnregisteredUnderMemlockLimit(const std::string& path,
                                      const std::string& contents) {
  if (!DropIpcLock()) return Fail("dropping CAP_IPC_LOCK");
  // Room for the ring (the kernel may account it too, against a limit all
  // of root's processes share) but not for the 1 MiB buffer.
  const rlimit limit = {512 * kKiB, 512 * kKiB};
  if (::setrlimit(RLIMIT_MEMLOCK, &limit) != 0) return Fail("setrlimit");
  ReadEngineOptions options;
  options.kind = Kind::kIoUring;
  absl::StatusOr<std::unique_ptr<ReadEngine>> engine =
      CreateReadEngine(options);
  if (!engine.ok()) return Fail(engine.status().ToString());
  const uint64_t before =
      CounterValue("warmstart_io_buffer_registration_failed_total");
  AlignedBuffer memory(1 * kMiB);
  const iovec buffer = {memory.data(), memory.size()};
  const absl::Status registered = (*engine)->RegisterBuffers({&buffer, 1});
  if (!registered.ok()) return Fail(registered.ToString());
  if (CounterValue("warmstart_io_buffer_registration_failed_total") !=
      before + 1) {
    return Fail("the refused registration was not counted once");
  }
  absl::StatusOr<ReadFile> file = OpenReadFile(path, true);
  if (!file.ok()) return Fail(file.status().ToString());
  absl::StatusOr<uint64_t> read = ReadOnce(
      **engine,
      ReadRequest{file->fd.get(), 0, memory.size(), memory.data(), path});
  if (!read.ok() || *read != contents.size()) {
    return Fail(absl::StrCat("read: ", read.status().ToString()));
  }
  if (std::memcmp(memory.data(), contents.data(), contents.size()) != 0) {
    return Fail("wrong bytes");
  }
  return 0;
}

TEST(RegisterBuffersDeathTest, LockedMemoryLimitLeavesBuffersUnregistered) {
  if (!IoUringWorksHere()) GTEST_SKIP() << "io_uring cannot be set up here";
  testing::ShortTempDir dir;
  std::mt19937_64 random(testing::TestSeed());
  const std::string contents = RandomBytes(1 * kMiB - 5000, random);
  WriteFile(dir.Join("memlock"), contents);
  EXPECT_EXIT(
      ::_exit(ReadUnregisteredUnderMemlockLimit(dir.Join("memlock"), contents)),
      ::testing::ExitedWithCode(0), "");
}

TEST(ShortReadIsEndOfFileTest, OnlyAnUnalignedStopOfAnAlignedRequest) {
  alignas(4096) static char buffer[3 * 4096];
  ReadRequest aligned{-1, 4096, 2 * 4096, buffer, "f"};
  EXPECT_TRUE(ShortReadIsEndOfFile(aligned, 100));
  EXPECT_FALSE(ShortReadIsEndOfFile(aligned, 4096));  // May be interrupted.
  ReadRequest buffered{-1, 10, 2 * 4096, buffer, "f"};
  EXPECT_FALSE(ShortReadIsEndOfFile(buffered, 100));
  ReadRequest unaligned_memory{-1, 4096, 2 * 4096, buffer + 1, "f"};
  EXPECT_FALSE(ShortReadIsEndOfFile(unaligned_memory, 100));
}

}  // namespace
}  // namespace warmstart
