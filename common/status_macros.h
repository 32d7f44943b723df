// Early-return helpers for absl::Status and absl::StatusOr.
//
// Debian's Abseil does not ship status macros, so the project keeps these two.
// Both evaluate their argument exactly once.
#ifndef WARMSTART_COMMON_STATUS_MACROS_H_
#define WARMSTART_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define WS_STATUS_CONCAT_INNER_(a, b) a##b
#define WS_STATUS_CONCAT_(a, b) WS_STATUS_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when `expr` is not OK.
#define WS_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::absl::Status ws_status_ = (expr);      \
    if (!ws_status_.ok()) return ws_status_; \
  } while (false)

// `WS_ASSIGN_OR_RETURN(auto x, StatusOrExpr());` declares or assigns `x` from
// the value, or returns the error from the enclosing function.
#define WS_ASSIGN_OR_RETURN(lhs, expr)                                      \
  WS_ASSIGN_OR_RETURN_IMPL_(WS_STATUS_CONCAT_(ws_statusor_, __LINE__), lhs, \
                            expr)

#define WS_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr)     \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // WARMSTART_COMMON_STATUS_MACROS_H_
