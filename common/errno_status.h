// Turns errno values (and io_uring's negated errno results) into absl::Status.
#ifndef WARMSTART_COMMON_ERRNO_STATUS_H_
#define WARMSTART_COMMON_ERRNO_STATUS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace warmstart {

// Returns a status whose code follows the errno class (ENOENT -> NotFound,
// EACCES/EPERM -> PermissionDenied, ENOMEM -> ResourceExhausted, ...) and whose
// message is "<context>: <strerror> (errno N)". `error_number` may be negative
// (io_uring completions); its absolute value is used. REQUIRES: error_number !=
// 0.
//
// The errors a disk, a filesystem or a network filesystem reports for data
// it cannot deliver (EIO, EUCLEAN, EBADMSG, EREMOTEIO, ESTALE, ENOMEDIUM,
// EMEDIUMTYPE) are DataLoss, their message ending "(errno N; an I/O error
// of the storage)": the marker survives gRPC, where payloads do not, so
// IsIoError recognises them on either side.
absl::Status ErrnoToStatus(int error_number, absl::string_view context);

// Whether `status` is an I/O error of the storage from ErrnoToStatus (here or
// in the daemon, across gRPC).
bool IsIoError(const absl::Status& status);

}  // namespace warmstart

#endif  // WARMSTART_COMMON_ERRNO_STATUS_H_
