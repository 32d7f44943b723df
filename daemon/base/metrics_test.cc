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

TEST(MetricsDeathTest, OneNameOneKind) {
  Metrics metrics;
  metrics.GetCounter("warmstart_test_kind", "x");
  EXPECT_DEATH(metrics.GetGauge("warmstart_test_kind", "x"), "not a gauge");
}

}  // namespace
}  // namespace warmstart
