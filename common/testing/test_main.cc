// The test main of every C++ test: prints the random seed so a failing
// randomised test can be replayed with --seed=N (or $WARMSTART_TEST_SEED).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>

#include "common/testing/test_env.h"
#include "gtest/gtest.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  uint32_t seed = std::random_device{}();
  if (const char* env = std::getenv("WARMSTART_TEST_SEED")) {
    seed = static_cast<uint32_t>(std::strtoul(env, nullptr, 10));
  }
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--seed=", 7) == 0) {
      seed = static_cast<uint32_t>(std::strtoul(argv[i] + 7, nullptr, 10));
    }
  }
  warmstart::testing::SetTestSeed(seed);
  std::printf("warmstart test seed: %u (replay with --seed=%u)\n", seed, seed);
  return RUN_ALL_TESTS();
}
