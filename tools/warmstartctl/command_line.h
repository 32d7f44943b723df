// The command line of warmstartctl: a subcommand, its positional arguments
// and its --flags, in any order ("--socket PATH" may come before or after
// the subcommand).
#ifndef WARMSTART_TOOLS_WARMSTARTCTL_COMMAND_LINE_H_
#define WARMSTART_TOOLS_WARMSTARTCTL_COMMAND_LINE_H_

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/protocol.h"

namespace warmstart {
namespace ctl {

struct CommandLine {
  std::string command;                        // Empty when none was given.
  std::vector<std::string> arguments;         // Positional, in order.
  std::map<std::string, std::string> values;  // --name VALUE / --name=VALUE.
  // Repeatable value flags, every value in order.
  std::map<std::string, std::vector<std::string>> lists;
  std::set<std::string> switches;  // --name without a value.

  bool Has(const std::string& name) const { return switches.count(name) > 0; }
  // The value of --name, or `fallback` when absent.
  std::string Value(const std::string& name, const std::string& fallback) const;
  // Every value of the repeatable flag --name (none when absent).
  std::vector<std::string> Values(const std::string& name) const;
};

// Parses argv[1..]. `value_flags` names the flags that take a value (as
// "--name"); every other "--x" is a switch. `repeatable_flags` name value
// flags that may be given more than once (into `lists`). Fails with
// InvalidArgument on a value flag without a value or a repeated value flag
// that is not repeatable.
absl::StatusOr<CommandLine> ParseCommandLine(
    int argc, const char* const* argv, const std::set<std::string>& value_flags,
    const std::set<std::string>& repeatable_flags = {});

// Checks that `line` uses only the given switches and value flags (as
// "--name"); InvalidArgument naming the first unknown one otherwise, so a
// mistyped flag is a usage error rather than silently ignored.
absl::Status CheckFlags(const CommandLine& line,
                        const std::set<std::string>& switches,
                        const std::set<std::string>& value_flags);

// The daemon's socket: --socket PATH, else $WARMSTART_SOCKET when set and
// not empty, else `default_path`.
std::string SocketPath(const CommandLine& line,
                       const std::string& default_path);

}  // namespace ctl
}  // namespace warmstart

#endif  // WARMSTART_TOOLS_WARMSTARTCTL_COMMAND_LINE_H_
