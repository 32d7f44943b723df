#include "daemon/base/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/check.h"

namespace warmstart {
namespace {

void CheckLabelCount(size_t want, const LabelValues& values) {
  if (values.size() != want) {
    WS_CHECK(false) << (absl::StrCat("metric series with ", values.size(),
                                     " label values, want ", want));
  }
}

// The shortest decimal form that reads back as the same double: bucket
// bounds stay "0.005", sums of large byte counts keep every digit.
std::string FormatDouble(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  for (int precision = 6; precision < 17; ++precision) {
    std::string s = absl::StrFormat("%.*g", precision, v);
    if (std::strtod(s.c_str(), nullptr) == v) return s;
  }
  return absl::StrFormat("%.17g", v);
}

std::string EscapeLabelValue(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string EscapeHelp(const std::string& help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// {a="x",b="y"} with an optional extra pair (a histogram's "le"); empty for
// no labels at all.
std::string LabelSet(const std::vector<std::string>& names,
                     const LabelValues& values, const std::string& extra_name,
                     const std::string& extra_value) {
  std::vector<std::string> pairs;
  for (size_t i = 0; i < names.size(); ++i) {
    pairs.push_back(
        absl::StrCat(names[i], "=\"", EscapeLabelValue(values[i]), "\""));
  }
  if (!extra_name.empty()) {
    pairs.push_back(absl::StrCat(extra_name, "=\"", extra_value, "\""));
  }
  if (pairs.empty()) return "";
  return absl::StrCat("{", absl::StrJoin(pairs, ","), "}");
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {
  if (bounds_.empty() || !std::is_sorted(bounds_.begin(), bounds_.end()) ||
      std::adjacent_find(bounds_.begin(), bounds_.end()) != bounds_.end()) {
    WS_CHECK(false)
        << ("histogram bounds must be non-empty and strictly increasing");
  }
}

void Histogram::Observe(double value) {
  // The first bound >= value; past the end means the +Inf bucket.
  const size_t bucket =
      std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  absl::MutexLock lock(&mutex_);
  ++counts_[bucket];
  sum_ += value;
  ++count_;
}

Histogram::Data Histogram::Read() const {
  absl::MutexLock lock(&mutex_);
  return Data{bounds_, counts_, sum_, count_};
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  if (!(start > 0) || !(factor > 1) || count < 1) {
    WS_CHECK(false)
        << ("ExponentialBuckets: need start > 0, factor > 1, count >= 1");
  }
  std::vector<double> bounds;
  double bound = start;
  for (int i = 0; i < count; ++i) {
    bounds.push_back(bound);
    bound *= factor;
  }
  return bounds;
}

Counter* CounterFamily::WithLabels(const LabelValues& values) {
  CheckLabelCount(label_count_, values);
  absl::MutexLock lock(&mutex_);
  std::unique_ptr<Counter>& counter = series_[values];
  if (counter == nullptr) counter = std::make_unique<Counter>();
  return counter.get();
}

std::map<LabelValues, uint64_t> CounterFamily::Read() const {
  absl::MutexLock lock(&mutex_);
  std::map<LabelValues, uint64_t> out;
  for (const auto& [values, counter] : series_) out[values] = counter->value();
  return out;
}

void GaugeFamily::Set(const LabelValues& values, int64_t value) {
  CheckLabelCount(label_count_, values);
  absl::MutexLock lock(&mutex_);
  series_[values] = value;
}

void GaugeFamily::ReplaceAll(std::map<LabelValues, int64_t> values) {
  for (const auto& [labels, value] : values) {
    CheckLabelCount(label_count_, labels);
  }
  absl::MutexLock lock(&mutex_);
  series_ = std::move(values);
}

std::map<LabelValues, int64_t> GaugeFamily::Read() const {
  absl::MutexLock lock(&mutex_);
  return series_;
}

Histogram* HistogramFamily::WithLabels(const LabelValues& values) {
  CheckLabelCount(label_count_, values);
  absl::MutexLock lock(&mutex_);
  std::unique_ptr<Histogram>& histogram = series_[values];
  if (histogram == nullptr) histogram = std::make_unique<Histogram>(bounds_);
  return histogram.get();
}

std::map<LabelValues, Histogram::Data> HistogramFamily::Read() const {
  absl::MutexLock lock(&mutex_);
  std::map<LabelValues, Histogram::Data> out;
  for (const auto& [values, histogram] : series_) {
    out[values] = histogram->Read();
  }
  return out;
}

Metrics& GivenOrUnexported(Metrics* given,
                           std::unique_ptr<Metrics>& unexported) {
  if (given != nullptr) return *given;
  if (unexported == nullptr) unexported = std::make_unique<Metrics>();
  return *unexported;
}

Metrics::Entry& Metrics::FindOrAddLocked(
    const std::string& name, Kind kind, const std::string& help,
    const std::vector<std::string>& label_names) {
  auto it = entries_.find(name);
  if (it != entries_.end()) {
    if (it->second.kind != kind) {
      WS_CHECK(false) << (absl::StrCat(
          "metric ", name, " is registered as another kind (",
          kind == Kind::kGauge ? "not a gauge" : "not a counter", ")"));
    }
    if (it->second.label_names != label_names) {
      WS_CHECK(false) << (absl::StrCat(
          "metric ", name, " is registered with labels {",
          absl::StrJoin(it->second.label_names, ","), "}"));
    }
    return it->second;
  }
  Entry& entry = entries_[name];
  entry.kind = kind;
  entry.help = help;
  entry.label_names = label_names;
  return entry;
}

Counter* Metrics::GetCounter(const std::string& name, const std::string& help) {
  absl::MutexLock lock(&mutex_);
  Entry& entry = FindOrAddLocked(name, Kind::kCounter, help, {});
  if (entry.counter == nullptr) entry.counter = std::make_unique<Counter>();
  return entry.counter.get();
}

Gauge* Metrics::GetGauge(const std::string& name, const std::string& help) {
  absl::MutexLock lock(&mutex_);
  Entry& entry = FindOrAddLocked(name, Kind::kGauge, help, {});
  if (entry.gauge == nullptr) entry.gauge = std::make_unique<Gauge>();
  return entry.gauge.get();
}

CounterFamily* Metrics::GetCounterFamily(const std::string& name,
                                         const std::string& help,
                                         std::vector<std::string> label_names) {
  absl::MutexLock lock(&mutex_);
  Entry& entry = FindOrAddLocked(name, Kind::kCounterFamily, help, label_names);
  if (entry.counter_family == nullptr) {
    entry.counter_family = std::make_unique<CounterFamily>(label_names.size());
  }
  return entry.counter_family.get();
}

GaugeFamily* Metrics::GetGaugeFamily(const std::string& name,
                                     const std::string& help,
                                     std::vector<std::string> label_names) {
  absl::MutexLock lock(&mutex_);
  Entry& entry = FindOrAddLocked(name, Kind::kGaugeFamily, help, label_names);
  if (entry.gauge_family == nullptr) {
    entry.gauge_family = std::make_unique<GaugeFamily>(label_names.size());
  }
  return entry.gauge_family.get();
}

HistogramFamily* Metrics::GetHistogramFamily(
    const std::string& name, const std::string& help,
    std::vector<std::string> label_names, std::vector<double> bounds) {
  absl::MutexLock lock(&mutex_);
  Entry& entry =
      FindOrAddLocked(name, Kind::kHistogramFamily, help, label_names);
  if (entry.histogram_family == nullptr) {
    // Checks the bounds now rather than at the first observation.
    Histogram check(bounds);
    entry.histogram_family = std::make_unique<HistogramFamily>(
        label_names.size(), std::move(bounds));
  }
  return entry.histogram_family.get();
}

std::string Metrics::PrometheusText() const {
  absl::MutexLock lock(&mutex_);
  std::string out;
  for (const auto& [name, entry] : entries_) {
    const std::vector<std::string>& names = entry.label_names;
    const char* type = "gauge";
    if (entry.kind == Kind::kCounter || entry.kind == Kind::kCounterFamily) {
      type = "counter";
    } else if (entry.kind == Kind::kHistogramFamily) {
      type = "histogram";
    }
    absl::StrAppend(&out, "# HELP ", name, " ", EscapeHelp(entry.help), "\n",
                    "# TYPE ", name, " ", type, "\n");
    switch (entry.kind) {
      case Kind::kCounter:
        absl::StrAppend(&out, name, " ", entry.counter->value(), "\n");
        break;
      case Kind::kGauge:
        absl::StrAppend(&out, name, " ", entry.gauge->value(), "\n");
        break;
      case Kind::kCounterFamily:
        for (const auto& [values, value] : entry.counter_family->Read()) {
          absl::StrAppend(&out, name, LabelSet(names, values, "", ""), " ",
                          value, "\n");
        }
        break;
      case Kind::kGaugeFamily:
        for (const auto& [values, value] : entry.gauge_family->Read()) {
          absl::StrAppend(&out, name, LabelSet(names, values, "", ""), " ",
                          value, "\n");
        }
        break;
      case Kind::kHistogramFamily:
        for (const auto& [values, data] : entry.histogram_family->Read()) {
          uint64_t cumulative = 0;
          for (size_t i = 0; i <= data.bounds.size(); ++i) {
            cumulative += data.counts[i];
            const std::string le = i < data.bounds.size()
                                       ? FormatDouble(data.bounds[i])
                                       : std::string("+Inf");
            absl::StrAppend(&out, name, "_bucket",
                            LabelSet(names, values, "le", le), " ", cumulative,
                            "\n");
          }
          const std::string labels = LabelSet(names, values, "", "");
          absl::StrAppend(&out, name, "_sum", labels, " ",
                          FormatDouble(data.sum), "\n", name, "_count", labels,
                          " ", data.count, "\n");
        }
        break;
    }
  }
  return out;
}

std::map<std::string, double> Metrics::Snapshot() const {
  absl::MutexLock lock(&mutex_);
  std::map<std::string, double> out;
  for (const auto& [name, entry] : entries_) {
    const std::vector<std::string>& names = entry.label_names;
    switch (entry.kind) {
      case Kind::kCounter:
        out[name] = static_cast<double>(entry.counter->value());
        break;
      case Kind::kGauge:
        out[name] = static_cast<double>(entry.gauge->value());
        break;
      case Kind::kCounterFamily:
        for (const auto& [values, value] : entry.counter_family->Read()) {
          out[name + LabelSet(names, values, "", "")] =
              static_cast<double>(value);
        }
        break;
      case Kind::kGaugeFamily:
        for (const auto& [values, value] : entry.gauge_family->Read()) {
          out[name + LabelSet(names, values, "", "")] =
              static_cast<double>(value);
        }
        break;
      case Kind::kHistogramFamily:
        for (const auto& [values, data] : entry.histogram_family->Read()) {
          const std::string labels = LabelSet(names, values, "", "");
          out[name + "_count" + labels] = static_cast<double>(data.count);
          out[name + "_sum" + labels] = data.sum;
        }
        break;
    }
  }
  return out;
}

}  // namespace warmstart
