// Counters and gauges, per component, exported by the stats RPC and a
// Prometheus text endpoint.
//
// Metrics live for the whole process: GetCounter/GetGauge return the same
// object for the same name, and the pointer never dangles.
//
// Thread safety: everything here is thread-safe; Add/Set are lock-free.
#ifndef WARMSTART_DAEMON_BASE_METRICS_H_
#define WARMSTART_DAEMON_BASE_METRICS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace warmstart {

// A monotonically increasing count (events, bytes).
class Counter {
 public:
  void Add(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// A value that goes up and down (resident bytes, models, leases).
class Gauge {
 public:
  void Set(int64_t v) { value_.store(v, std::memory_order_relaxed); }
  void Add(int64_t n) { value_.fetch_add(n, std::memory_order_relaxed); }
  int64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> value_{0};
};

class Metrics {
 public:
  // The process-wide registry.
  static Metrics& Global();

  // Names follow Prometheus: "warmstart_<component>_<what>[_total]".
  // REQUIRES: a name is used for one kind (counter or gauge) only.
  Counter* GetCounter(const std::string& name, const std::string& help);
  Gauge* GetGauge(const std::string& name, const std::string& help);

  // Every metric in the Prometheus text exposition format, sorted by name.
  std::string PrometheusText() const;
  // name -> current value, sorted by name.
  std::map<std::string, double> Snapshot() const;

 private:
  struct Entry {
    std::string help;
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
  };
  mutable absl::Mutex mutex_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_BASE_METRICS_H_
