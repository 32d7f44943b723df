// Turns errno values (and io_uring's negated errno results) into absl::Status.
#ifndef WARMSTART_DAEMON_BASE_ERRNO_STATUS_H_
#define WARMSTART_DAEMON_BASE_ERRNO_STATUS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace warmstart {

// Returns a status whose code follows the errno class (ENOENT -> NotFound,
// EACCES/EPERM -> PermissionDenied, ENOMEM -> ResourceExhausted, ...) and whose
// message is "<context>: <strerror> (errno N)". `error_number` may be negative
// (io_uring completions); its absolute value is used. REQUIRES: error_number !=
// 0.
absl::Status ErrnoToStatus(int error_number, absl::string_view context);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_BASE_ERRNO_STATUS_H_
