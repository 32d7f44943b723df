// WS_CHECK: the one way to stop the process on a broken invariant (a bug of
// this program, never bad input: input errors are statuses).
//
//   WS_CHECK(free_.size() == slab_count_)
//       << "StagingPool destroyed with " << on_loan << " slabs on loan";
//
// When `condition` is false, writes "<file>:<line>: check failed:
// <condition>: <message>" to stderr and aborts (a core dump, a nonzero exit
// under a supervisor). The message operands are evaluated only then. When it
// holds, costs the test alone. Thread-safe.
#ifndef WARMSTART_COMMON_CHECK_H_
#define WARMSTART_COMMON_CHECK_H_

#include <sstream>

namespace warmstart {
namespace internal {

// Collects the message of a failed check; its destructor prints and aborts.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition);
  [[noreturn]] ~CheckFailure();
  CheckFailure(const CheckFailure&) = delete;
  CheckFailure& operator=(const CheckFailure&) = delete;

  template <typename T>
  CheckFailure& operator<<(const T& value) {
    if (!has_message_) message_ << ": ";
    has_message_ = true;
    message_ << value;
    return *this;
  }

 private:
  std::ostringstream message_;
  bool has_message_ = false;
};

// Turns the streamed CheckFailure into void, so that WS_CHECK is one
// expression with (void)0 on the other side of the conditional.
struct CheckVoidify {
  void operator&(const CheckFailure&) const {}
};

}  // namespace internal
}  // namespace warmstart

#define WS_CHECK(condition)                                                 \
  (condition) ? (void)0                                                     \
              : ::warmstart::internal::CheckVoidify() &                     \
                    ::warmstart::internal::CheckFailure(__FILE__, __LINE__, \
                                                        #condition)

#endif  // WARMSTART_COMMON_CHECK_H_
