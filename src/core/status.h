// Status and Result<T>: Frugal's error values, after LevelDB's Status.
// Immutable values; safe to copy and to read from any thread.
//
// Exception policy (the one place it is stated): Frugal's own code never throws. Every fallible
// operation returns a Status or a Result<T>. Exceptions raised by third-party libraries (Gloo
// throws gloo::Exception, LibTorch throws c10::Error, the standard library throws on allocation
// failure) are caught at the call site that crosses into the library and converted to a Status
// carrying context. A violated precondition marked `// REQUIRES:` is a programming error and
// aborts via FRUGAL_CHECK.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace frugal {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,     // bad flag, config, shape, spec string: the caller can fix it
  kNotFound,            // a file, key or name that does not exist
  kOutOfRange,          // an index, size or value beyond what is valid
  kFailedPrecondition,  // the system is not in a state where the call can run
  kDeadlineExceeded,    // a timeout: a peer did not answer in time
  kUnavailable,         // a peer died or a connection broke
  kDataLoss,            // corrupt or truncated data
  kAborted,             // cancelled, e.g. by Ctrl-C or another rank's failure
  kUnimplemented,       // not built in or not supported
  kInternal,            // a bug, or an unexpected library error
};

std::string_view status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return Status(); }

  bool is_ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "InvalidArgument: <message>", or "OK".
  std::string to_string() const;

  // Returns a copy whose message is "<context>: <message>"; OK stays OK.
  Status with_context(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status invalid_argument(std::string m) {
  return {StatusCode::kInvalidArgument, std::move(m)};
}
inline Status not_found(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status out_of_range(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
inline Status failed_precondition(std::string m) {
  return {StatusCode::kFailedPrecondition, std::move(m)};
}
inline Status deadline_exceeded(std::string m) {
  return {StatusCode::kDeadlineExceeded, std::move(m)};
}
inline Status unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status data_loss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
inline Status aborted(std::string m) { return {StatusCode::kAborted, std::move(m)}; }
inline Status unimplemented(std::string m) { return {StatusCode::kUnimplemented, std::move(m)}; }
inline Status internal_error(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

// A value or the Status explaining why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}        // NOLINT: implicit by design
  Result(Status status) : state_(std::move(status)) {  // NOLINT: implicit by design
    if (std::get<Status>(state_).is_ok()) {
      state_ = Status(StatusCode::kInternal, "Result constructed from an OK status");
    }
  }

  bool is_ok() const { return std::holds_alternative<T>(state_); }
  Status status() const { return is_ok() ? Status() : std::get<Status>(state_); }

  // REQUIRES: is_ok()
  T& value() & { return std::get<T>(state_); }
  const T& value() const& { return std::get<T>(state_); }
  T&& value() && { return std::get<T>(std::move(state_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }

 private:
  std::variant<T, Status> state_;
};

[[noreturn]] void check_failed(const char* file, int line, const char* condition,
                               const std::string& message);

}  // namespace frugal

#define FRUGAL_CONCAT_INNER(a, b) a##b
#define FRUGAL_CONCAT(a, b) FRUGAL_CONCAT_INNER(a, b)

// Returns from the enclosing function if `expr` (a Status) is not OK.
#define FRUGAL_RETURN_IF_ERROR(expr)                    \
  do {                                                  \
    ::frugal::Status frugal_status_ = (expr);           \
    if (!frugal_status_.is_ok()) return frugal_status_; \
  } while (0)

// `lhs = value of expr` (a Result<T>), or returns its Status from the enclosing function.
#define FRUGAL_ASSIGN_OR_RETURN(lhs, expr) \
  FRUGAL_ASSIGN_OR_RETURN_IMPL(FRUGAL_CONCAT(frugal_result_, __LINE__), lhs, expr)
#define FRUGAL_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.is_ok()) return tmp.status();             \
  lhs = std::move(tmp).value()

// Aborts with a message when an internal invariant (not user input) is violated.
#define FRUGAL_CHECK(cond, message)                                            \
  do {                                                                         \
    if (!(cond)) ::frugal::check_failed(__FILE__, __LINE__, #cond, (message)); \
  } while (0)
