#include "common/check.h"

#include <string>

#include "gtest/gtest.h"

namespace warmstart {
namespace {

TEST(CheckTest, HoldingConditionDoesNothingAndSkipsTheMessage) {
  int evaluated = 0;
  auto count = [&evaluated] { return ++evaluated; };
  WS_CHECK(1 + 1 == 2) << "never shown " << count();
  EXPECT_EQ(evaluated, 0);
}

TEST(CheckDeathTest, BrokenInvariantPrintsWhereWhatAndWhyThenAborts) {
  const int on_loan = 3;
  EXPECT_DEATH(WS_CHECK(on_loan == 0) << on_loan << " slabs on loan",
               "check_test.cc:[0-9]+: check failed: on_loan == 0: 3 slabs "
               "on loan");
}

TEST(CheckDeathTest, WorksWithoutAMessage) {
  EXPECT_DEATH(WS_CHECK(false), "check failed: false");
}

}  // namespace
}  // namespace warmstart
