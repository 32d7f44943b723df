#include "common/status_macros.h"

#include <memory>

#include "common/testing/status_matchers.h"

namespace warmstart {
namespace {

int g_calls = 0;

absl::Status CountedStatus(absl::Status status) {
  ++g_calls;
  return status;
}

absl::StatusOr<std::unique_ptr<int>> MakeInt(bool ok) {
  ++g_calls;
  if (!ok) return absl::NotFoundError("no int");
  return std::make_unique<int>(7);
}

absl::Status UsesReturnIfError(absl::Status inner, bool* reached_end) {
  WS_RETURN_IF_ERROR(CountedStatus(inner));
  *reached_end = true;
  return absl::OkStatus();
}

absl::StatusOr<int> UsesAssignOrReturn(bool ok) {
  WS_ASSIGN_OR_RETURN(std::unique_ptr<int> value, MakeInt(ok));  // Move-only.
  return *value + 1;
}

TEST(StatusMacrosTest, ReturnIfErrorPassesErrorsAndContinuesOnOk) {
  g_calls = 0;
  bool reached_end = false;
  EXPECT_THAT(UsesReturnIfError(absl::InternalError("boom"), &reached_end),
              StatusIs(absl::StatusCode::kInternal, "boom"));
  EXPECT_FALSE(reached_end);
  EXPECT_OK(UsesReturnIfError(absl::OkStatus(), &reached_end));
  EXPECT_TRUE(reached_end);
  EXPECT_EQ(g_calls, 2);  // The expression is evaluated once per use.
}

TEST(StatusMacrosTest, AssignOrReturnMovesValueOrReturnsError) {
  g_calls = 0;
  ASSERT_OK_AND_ASSIGN(int value, UsesAssignOrReturn(true));
  EXPECT_EQ(value, 8);
  EXPECT_THAT(UsesAssignOrReturn(false),
              StatusIs(absl::StatusCode::kNotFound, "no int"));
  EXPECT_EQ(g_calls, 2);
}

}  // namespace
}  // namespace warmstart
