#include "daemon/base/metrics.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace warmstart {

Metrics& Metrics::Global() {
  static Metrics* const metrics = new Metrics;
  return *metrics;
}

Counter* Metrics::GetCounter(const std::string& name, const std::string& help) {
  absl::MutexLock lock(&mutex_);
  Entry& entry = entries_[name];
  if (entry.counter == nullptr) {
    if (entry.gauge != nullptr) {
      std::fprintf(stderr, "metric %s is a gauge, not a counter\n",
                   name.c_str());
      std::abort();
    }
    entry.counter = std::make_unique<Counter>();
    entry.help = help;
  }
  return entry.counter.get();
}

Gauge* Metrics::GetGauge(const std::string& name, const std::string& help) {
  absl::MutexLock lock(&mutex_);
  Entry& entry = entries_[name];
  if (entry.gauge == nullptr) {
    if (entry.counter != nullptr) {
      std::fprintf(stderr, "metric %s is a counter, not a gauge\n",
                   name.c_str());
      std::abort();
    }
    entry.gauge = std::make_unique<Gauge>();
    entry.help = help;
  }
  return entry.gauge.get();
}

std::string Metrics::PrometheusText() const {
  absl::MutexLock lock(&mutex_);
  std::string out;
  for (const auto& [name, entry] : entries_) {
    const bool counter = entry.counter != nullptr;
    absl::StrAppend(&out, "# HELP ", name, " ", entry.help, "\n", "# TYPE ",
                    name, counter ? " counter\n" : " gauge\n", name, " ",
                    counter ? absl::StrCat(entry.counter->value())
                            : absl::StrCat(entry.gauge->value()),
                    "\n");
  }
  return out;
}

std::map<std::string, double> Metrics::Snapshot() const {
  absl::MutexLock lock(&mutex_);
  std::map<std::string, double> out;
  for (const auto& [name, entry] : entries_) {
    out[name] = entry.counter != nullptr
                    ? static_cast<double>(entry.counter->value())
                    : static_cast<double>(entry.gauge->value());
  }
  return out;
}

}  // namespace warmstart
