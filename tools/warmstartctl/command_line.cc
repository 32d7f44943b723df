#include "tools/warmstartctl/command_line.h"

#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace warmstart {
namespace ctl {

std::vector<std::string> CommandLine::Values(const std::string& name) const {
  auto it = lists.find(name);
  return it == lists.end() ? std::vector<std::string>() : it->second;
}

std::string CommandLine::Value(const std::string& name,
                               const std::string& fallback) const {
  auto it = values.find(name);
  return it == values.end() ? fallback : it->second;
}

absl::StatusOr<CommandLine> ParseCommandLine(
    int argc, const char* const* argv, const std::set<std::string>& value_flags,
    const std::set<std::string>& repeatable_flags) {
  CommandLine line;
  bool only_positional = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (only_positional || !absl::StartsWith(arg, "--") || arg == "--") {
      if (arg == "--" && !only_positional) {
        only_positional = true;
        continue;
      }
      if (line.command.empty()) {
        line.command = arg;
      } else {
        line.arguments.push_back(arg);
      }
      continue;
    }
    std::string name = arg;
    std::string value;
    bool has_value = false;
    if (size_t equals = arg.find('='); equals != std::string::npos) {
      name = arg.substr(0, equals);
      value = arg.substr(equals + 1);
      has_value = true;
    }
    const bool repeatable = repeatable_flags.count(name) > 0;
    if (value_flags.count(name) == 0 && !repeatable) {
      if (has_value) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, " takes no value"));
      }
      line.switches.insert(name);
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError(absl::StrCat(name, " needs a value"));
      }
      value = argv[++i];
    }
    if (repeatable) {
      line.lists[name].push_back(value);
      continue;
    }
    if (!line.values.emplace(name, value).second) {
      return absl::InvalidArgumentError(absl::StrCat(name, " given twice"));
    }
  }
  return line;
}

absl::Status CheckFlags(const CommandLine& line,
                        const std::set<std::string>& switches,
                        const std::set<std::string>& value_flags) {
  for (const std::string& name : line.switches) {
    if (switches.count(name) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag ", name,
                       value_flags.count(name) ? " (it needs a value)" : "",
                       line.command.empty() ? "" : " for " + line.command));
    }
  }
  for (const auto& [name, value] : line.values) {
    if (value_flags.count(name) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag ", name,
                       line.command.empty() ? "" : " for " + line.command));
    }
  }
  for (const auto& [name, list] : line.lists) {
    if (value_flags.count(name) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag ", name,
                       line.command.empty() ? "" : " for " + line.command));
    }
  }
  return absl::OkStatus();
}

std::string SocketPath(const CommandLine& line,
                       const std::string& default_path) {
  if (auto it = line.values.find("--socket"); it != line.values.end()) {
    return it->second;
  }
  const char* env = std::getenv(kSocketEnv);
  if (env != nullptr && *env != '\0') return env;
  return default_path;
}

}  // namespace ctl
}  // namespace warmstart
