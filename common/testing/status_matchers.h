// GoogleTest matchers for absl::Status and absl::StatusOr.
//
//   EXPECT_THAT(DoIt(), IsOk());
//   EXPECT_THAT(Parse(bad), StatusIs(absl::StatusCode::kInvalidArgument,
//                                    HasSubstr("data_offsets")));
//   ASSERT_OK_AND_ASSIGN(auto value, MakeValue());
#ifndef WARMSTART_COMMON_TESTING_STATUS_MATCHERS_H_
#define WARMSTART_COMMON_TESTING_STATUS_MATCHERS_H_

#include <ostream>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace testing_internal {

inline const absl::Status& GetStatus(const absl::Status& status) {
  return status;
}
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

}  // namespace testing_internal

MATCHER(IsOk, "is OK") {
  const absl::Status& status = testing_internal::GetStatus(arg);
  if (!status.ok()) *result_listener << "status: " << status;
  return status.ok();
}

MATCHER_P2(StatusIs, code, message_matcher,
           "has code " + absl::StatusCodeToString(code)) {
  const absl::Status& status = testing_internal::GetStatus(arg);
  *result_listener << "status: " << status;
  return status.code() == code &&
         ::testing::ExplainMatchResult(
             message_matcher, std::string(status.message()), result_listener);
}

// StatusIs(code): any message.
MATCHER_P(StatusIs, code, "has code " + absl::StatusCodeToString(code)) {
  const absl::Status& status = testing_internal::GetStatus(arg);
  *result_listener << "status: " << status;
  return status.code() == code;
}

}  // namespace warmstart

#define WS_TESTING_CONCAT_INNER_(a, b) a##b
#define WS_TESTING_CONCAT_(a, b) WS_TESTING_CONCAT_INNER_(a, b)

#define ASSERT_OK(expr) ASSERT_THAT((expr), ::warmstart::IsOk())
#define EXPECT_OK(expr) EXPECT_THAT((expr), ::warmstart::IsOk())

#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  WS_ASSERT_OK_AND_ASSIGN_IMPL_(WS_TESTING_CONCAT_(ws_or_, __LINE__), lhs, expr)
#define WS_ASSERT_OK_AND_ASSIGN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                  \
  ASSERT_THAT(statusor.status(), ::warmstart::IsOk());     \
  lhs = std::move(statusor).value()

#endif  // WARMSTART_COMMON_TESTING_STATUS_MATCHERS_H_
