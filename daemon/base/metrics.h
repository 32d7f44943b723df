// Counters, gauges and histograms, per component, exported by the stats RPC
// and a Prometheus text endpoint.
//
// A metric is either plain (one series) or a family with label names (one
// series per combination of label values, e.g. {model="llama",
// device="host"}). Metrics live as long as their Metrics object: the Get*
// calls return the same object for the same name, and the pointers they (and
// the families' WithLabels) return never dangle while it lives. Components
// take a Metrics* through their options (not owned; it must outlive them):
// the daemon's composition root (daemon/server) owns the one it exports, and
// tests pass their own, so no test reads another's counts. There is no
// process-wide instance.
//
// Thread safety: everything here is thread-safe. Counter and Gauge updates
// are lock-free; a Histogram observation and a family look-up take a short
// lock.
#ifndef WARMSTART_DAEMON_BASE_METRICS_H_
#define WARMSTART_DAEMON_BASE_METRICS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

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

// Observations counted into buckets with fixed upper bounds (Prometheus
// "le", cumulative when exported), plus their sum and count.
class Histogram {
 public:
  // REQUIRES: `bounds` is non-empty and strictly increasing.
  explicit Histogram(std::vector<double> bounds);

  void Observe(double value);

  struct Data {
    std::vector<double> bounds;
    // counts[i]: observations <= bounds[i] and > bounds[i-1]; one more
    // entry at the end for those above every bound.
    std::vector<uint64_t> counts;
    double sum = 0;
    uint64_t count = 0;
  };
  Data Read() const;

 private:
  const std::vector<double> bounds_;
  mutable absl::Mutex mutex_;
  std::vector<uint64_t> counts_ ABSL_GUARDED_BY(mutex_);
  double sum_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t count_ ABSL_GUARDED_BY(mutex_) = 0;
};

// Bucket bounds: `count` bounds from `start`, each `factor` times the last.
// REQUIRES: start > 0, factor > 1, count >= 1.
std::vector<double> ExponentialBuckets(double start, double factor, int count);

// Label values, in the order of the family's label names.
using LabelValues = std::vector<std::string>;

// One counter per combination of label values.
class CounterFamily {
 public:
  explicit CounterFamily(size_t label_count) : label_count_(label_count) {}
  // REQUIRES: values.size() equals the number of label names.
  Counter* WithLabels(const LabelValues& values);
  std::map<LabelValues, uint64_t> Read() const;

 private:
  const size_t label_count_;
  mutable absl::Mutex mutex_;
  std::map<LabelValues, std::unique_ptr<Counter>> series_
      ABSL_GUARDED_BY(mutex_);
};

// One value per combination of label values. Series come and go with what
// they describe (a model unloaded takes its series with it), so a gauge
// family hands out no pointers: Set one series or replace them all.
class GaugeFamily {
 public:
  explicit GaugeFamily(size_t label_count) : label_count_(label_count) {}
  // REQUIRES: every LabelValues has one value per label name.
  void Set(const LabelValues& values, int64_t value);
  void ReplaceAll(std::map<LabelValues, int64_t> values);
  std::map<LabelValues, int64_t> Read() const;

 private:
  const size_t label_count_;
  mutable absl::Mutex mutex_;
  std::map<LabelValues, int64_t> series_ ABSL_GUARDED_BY(mutex_);
};

// One histogram per combination of label values, all with the same bounds.
class HistogramFamily {
 public:
  HistogramFamily(size_t label_count, std::vector<double> bounds)
      : label_count_(label_count), bounds_(std::move(bounds)) {}
  // REQUIRES: values.size() equals the number of label names.
  Histogram* WithLabels(const LabelValues& values);
  std::map<LabelValues, Histogram::Data> Read() const;

 private:
  const size_t label_count_;
  const std::vector<double> bounds_;
  mutable absl::Mutex mutex_;
  std::map<LabelValues, std::unique_ptr<Histogram>> series_
      ABSL_GUARDED_BY(mutex_);
};

class Metrics {
 public:
  // Names follow Prometheus: "warmstart_<component>_<what>[_total]"; label
  // names [a-z_]+. A name's kind and label names are fixed by its first
  // registration.
  // REQUIRES: a name is used for one kind, and one set of label names, only.
  Counter* GetCounter(const std::string& name, const std::string& help);
  Gauge* GetGauge(const std::string& name, const std::string& help);
  CounterFamily* GetCounterFamily(const std::string& name,
                                  const std::string& help,
                                  std::vector<std::string> label_names);
  GaugeFamily* GetGaugeFamily(const std::string& name, const std::string& help,
                              std::vector<std::string> label_names);
  HistogramFamily* GetHistogramFamily(const std::string& name,
                                      const std::string& help,
                                      std::vector<std::string> label_names,
                                      std::vector<double> bounds);

  // Every metric in the Prometheus text exposition format (0.0.4), sorted by
  // name, then by label values.
  std::string PrometheusText() const;
  // Series -> current value, sorted. Plain metrics by name; labelled series
  // as name{label="value",...}; histograms as their _count and _sum.
  std::map<std::string, double> Snapshot() const;

 private:
  enum class Kind {
    kCounter,
    kGauge,
    kCounterFamily,
    kGaugeFamily,
    kHistogramFamily
  };
  struct Entry {
    Kind kind;
    std::string help;
    std::vector<std::string> label_names;
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<CounterFamily> counter_family;
    std::unique_ptr<GaugeFamily> gauge_family;
    std::unique_ptr<HistogramFamily> histogram_family;
  };
  // Finds or adds `name`; aborts if it exists with another kind or labels.
  Entry& FindOrAddLocked(const std::string& name, Kind kind,
                         const std::string& help,
                         const std::vector<std::string>& label_names)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  mutable absl::Mutex mutex_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mutex_);
};

// For components whose Metrics* is optional: `given` when not null, else a
// Metrics made in `unexported` (which the component keeps, so the counts
// live as long as it does and nobody reads them).
Metrics& GivenOrUnexported(Metrics* given,
                           std::unique_ptr<Metrics>& unexported);

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_BASE_METRICS_H_
