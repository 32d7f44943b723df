#include "daemon/base/metrics.h"

#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace warmstart {
namespace {

using ::testing::HasSubstr;

TEST(MetricsTest, SameNameSameMetric) {
  Metrics metrics;
  Counter* a = metrics.GetCounter("warmstart_test_reads_total", "reads");
  Counter* b = metrics.GetCounter("warmstart_test_reads_total", "reads");
  EXPECT_EQ(a, b);
}

TEST(MetricsTest, CountersAddAcrossThreads) {
  Metrics metrics;
  Counter* counter = metrics.GetCounter("warmstart_test_events_total", "e");
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([counter] {
      for (int i = 0; i < 10000; ++i) counter->Add();
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(counter->value(), 40000u);
}

TEST(MetricsTest, PrometheusTextAndSnapshot) {
  Metrics metrics;
  metrics.GetCounter("warmstart_io_bytes_read_total", "Bytes read.")->Add(42);
  Gauge* gauge = metrics.GetGauge("warmstart_registry_models", "Models.");
  gauge->Set(3);
  gauge->Add(-1);
  EXPECT_EQ(metrics.PrometheusText(),
            "# HELP warmstart_io_bytes_read_total Bytes read.\n"
            "# TYPE warmstart_io_bytes_read_total counter\n"
            "warmstart_io_bytes_read_total 42\n"
            "# HELP warmstart_registry_models Models.\n"
            "# TYPE warmstart_registry_models gauge\n"
            "warmstart_registry_models 2\n");
  auto snapshot = metrics.Snapshot();
  EXPECT_EQ(snapshot["warmstart_io_bytes_read_total"], 42);
  EXPECT_EQ(snapshot["warmstart_registry_models"], 2);
}

TEST(MetricsTest, LabelledCountersAndGauges) {
  Metrics metrics;
  CounterFamily* loads = metrics.GetCounterFamily(
      "warmstart_test_loads_total", "Loads.", {"model", "device"});
  EXPECT_EQ(loads, metrics.GetCounterFamily("warmstart_test_loads_total",
                                            "Loads.", {"model", "device"}));
  loads->WithLabels({"llama", "host"})->Add(2);
  loads->WithLabels({"a\"b\\c\nd", "GPU-1"})->Add();
  EXPECT_EQ(loads->WithLabels({"llama", "host"}),
            loads->WithLabels({"llama", "host"}));
  GaugeFamily* leases =
      metrics.GetGaugeFamily("warmstart_test_leases", "Leases.", {"model"});
  leases->Set({"llama"}, 3);
  leases->Set({"gone"}, 1);
  leases->ReplaceAll({{{"llama"}, 4}, {{"phi"}, 0}});
  EXPECT_EQ(metrics.PrometheusText(),
            "# HELP warmstart_test_leases Leases.\n"
            "# TYPE warmstart_test_leases gauge\n"
            "warmstart_test_leases{model=\"llama\"} 4\n"
            "warmstart_test_leases{model=\"phi\"} 0\n"
            "# HELP warmstart_test_loads_total Loads.\n"
            "# TYPE warmstart_test_loads_total counter\n"
            "warmstart_test_loads_total{model=\"a\\\"b\\\\c\\nd\","
            "device=\"GPU-1\"} 1\n"
            "warmstart_test_loads_total{model=\"llama\",device=\"host\"} 2\n");
  auto snapshot = metrics.Snapshot();
  EXPECT_EQ(snapshot["warmstart_test_leases{model=\"llama\"}"], 4);
  EXPECT_EQ(snapshot.count("warmstart_test_leases{model=\"gone\"}"), 0u);
  EXPECT_EQ(
      snapshot["warmstart_test_loads_total{model=\"llama\",device=\"host\"}"],
      2);
}

TEST(MetricsTest, HistogramBucketsAreCumulative) {
  Metrics metrics;
  HistogramFamily* family = metrics.GetHistogramFamily(
      "warmstart_test_seconds", "Time.", {"model"}, {0.1, 1, 10});
  Histogram* h = family->WithLabels({"m"});
  h->Observe(0.05);
  h->Observe(0.1);  // On a bound: counted in that bucket (le).
  h->Observe(5);
  h->Observe(1e6);
  EXPECT_EQ(metrics.PrometheusText(),
            "# HELP warmstart_test_seconds Time.\n"
            "# TYPE warmstart_test_seconds histogram\n"
            "warmstart_test_seconds_bucket{model=\"m\",le=\"0.1\"} 2\n"
            "warmstart_test_seconds_bucket{model=\"m\",le=\"1\"} 2\n"
            "warmstart_test_seconds_bucket{model=\"m\",le=\"10\"} 3\n"
            "warmstart_test_seconds_bucket{model=\"m\",le=\"+Inf\"} 4\n"
            "warmstart_test_seconds_sum{model=\"m\"} 1000005.15\n"
            "warmstart_test_seconds_count{model=\"m\"} 4\n");
  auto snapshot = metrics.Snapshot();
  EXPECT_EQ(snapshot["warmstart_test_seconds_count{model=\"m\"}"], 4);
  EXPECT_DOUBLE_EQ(snapshot["warmstart_test_seconds_sum{model=\"m\"}"],
                   1000005.15);
}

TEST(MetricsTest, ExponentialBuckets) {
  EXPECT_THAT(ExponentialBuckets(0.001, 10, 4),
              ::testing::ElementsAre(0.001, 0.01, ::testing::DoubleEq(0.1),
                                     ::testing::DoubleEq(1)));
}

TEST(MetricsDeathTest, OneNameOneSetOfLabels) {
  Metrics metrics;
  metrics.GetGaugeFamily("warmstart_test_family", "x", {"model"});
  EXPECT_DEATH(metrics.GetGaugeFamily("warmstart_test_family", "x", {"device"}),
               "registered with labels");
  GaugeFamily* family =
      metrics.GetGaugeFamily("warmstart_test_family", "x", {"model"});
  EXPECT_DEATH(family->Set({"a", "b"}, 1), "2 label values, want 1");
}

TEST(MetricsDeathTest, HistogramBoundsMustIncrease) {
  Metrics metrics;
  EXPECT_DEATH(
      metrics.GetHistogramFamily("warmstart_test_h", "x", {}, {1, 1, 2}),
      "strictly increasing");
}

TEST(MetricsDeathTest, OneNameOneKind) {
  Metrics metrics;
  metrics.GetCounter("warmstart_test_kind", "x");
  EXPECT_DEATH(metrics.GetGauge("warmstart_test_kind", "x"), "not a gauge");
}

}  // namespace
}  // namespace warmstart
