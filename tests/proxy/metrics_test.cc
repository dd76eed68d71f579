#include "proxy/metrics.h"

#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "conf/policy_factory.h"
#include "proxy/proxy_context.h"

namespace acr {
namespace {

struct Sample {
  std::string name;
  std::string labels;  // as written between the braces, escapes kept
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> types;  // family -> counter|gauge|histogram
  std::vector<Sample> samples;
};

// The family a sample belongs to: histogram samples carry a _bucket/_sum/_count suffix.
std::string familyOf(const std::string& name, const std::map<std::string, std::string>& types) {
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    const std::string s(suffix);
    if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
      const std::string base = name.substr(0, name.size() - s.size());
      const auto it = types.find(base);
      if (it != types.end() && it->second == "histogram") {
        return base;
      }
    }
  }
  return name;
}

bool isMetricName(std::string_view name) {
  if (name.empty() ||
      !(std::isalpha(static_cast<unsigned char>(name[0])) || name[0] == '_' || name[0] == ':')) {
    return false;
  }
  for (const char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == ':')) {
      return false;
    }
  }
  return true;
}

// Checks `labels` (between the braces) is name="value"[,name="value"...] with only \\, \" and
// \n escapes and no raw newline.
bool validLabels(std::string_view labels) {
  size_t i = 0;
  while (i < labels.size()) {
    const size_t equals = labels.find('=', i);
    if (equals == std::string_view::npos || !isMetricName(labels.substr(i, equals - i)) ||
        labels.substr(i, equals - i).find(':') != std::string_view::npos ||
        equals + 1 >= labels.size() || labels[equals + 1] != '"') {
      return false;
    }
    i = equals + 2;
    for (;; ++i) {
      if (i >= labels.size() || labels[i] == '\n') {
        return false;
      }
      if (labels[i] == '"') {
        break;
      }
      if (labels[i] == '\\') {
        if (i + 1 >= labels.size() ||
            (labels[i + 1] != '\\' && labels[i + 1] != '"' && labels[i + 1] != 'n')) {
          return false;
        }
        ++i;
      }
    }
    ++i;  // the closing quote
    if (i < labels.size()) {
      if (labels[i] != ',') {
        return false;
      }
      ++i;
    }
  }
  return true;
}

// Parses `text` strictly: every line is "# HELP name text", "# TYPE name type" (right after its
// HELP, each once per family) or a sample `name{labels} value` of a family already TYPE'd; fails
// the test otherwise.
Exposition parseStrict(const std::string& text) {
  Exposition out;
  std::set<std::string> helped;
  EXPECT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n');
  std::istringstream in(text);
  std::string line;
  std::string last_help;
  while (std::getline(in, line)) {
    if (line.rfind("# HELP ", 0) == 0) {
      const std::string rest = line.substr(7);
      const std::string name = rest.substr(0, rest.find(' '));
      EXPECT_TRUE(isMetricName(name) && rest.size() > name.size()) << line;
      EXPECT_TRUE(helped.insert(name).second) << "HELP twice: " << line;
      last_help = name;
    } else if (line.rfind("# TYPE ", 0) == 0) {
      const std::string rest = line.substr(7);
      const size_t space = rest.find(' ');
      if (space == std::string::npos) {
        ADD_FAILURE() << "bad TYPE line: " << line;
        continue;
      }
      const std::string name = rest.substr(0, space);
      const std::string type = rest.substr(space + 1);
      EXPECT_TRUE(isMetricName(name)) << line;
      EXPECT_TRUE(type == "counter" || type == "gauge" || type == "histogram") << line;
      EXPECT_EQ(last_help, name) << "TYPE not right after its HELP: " << line;
      EXPECT_TRUE(out.types.emplace(name, type).second) << "TYPE twice: " << line;
    } else {
      const size_t space = line.rfind(' ');
      if (space == std::string::npos) {
        ADD_FAILURE() << "not a sample line: '" << line << "'";
        continue;
      }
      const std::string series = line.substr(0, space);
      const std::string value = line.substr(space + 1);
      Sample sample;
      const size_t brace = series.find('{');
      sample.name = series.substr(0, brace);
      if (brace != std::string::npos) {
        EXPECT_EQ(series.back(), '}') << line;
        sample.labels = series.substr(brace + 1, series.size() - brace - 2);
        EXPECT_TRUE(validLabels(sample.labels)) << line;
      }
      EXPECT_TRUE(isMetricName(sample.name)) << line;
      if (value == "+Inf") {
        sample.value = INFINITY;
      } else {
        size_t used = 0;
        sample.value = std::stod(value, &used);
        EXPECT_EQ(used, value.size()) << line;
      }
      EXPECT_TRUE(out.types.count(familyOf(sample.name, out.types)))
          << "sample before its TYPE: " << line;
      out.samples.push_back(sample);
    }
  }
  return out;
}

std::string render(const Metrics& metrics) {
  ProxyStats stats;
  stats.accepted = 7;
  stats.rejected_overload = 2;
  stats.accept_errors = 1;
  std::string out;
  metrics.render(out, stats, std::chrono::system_clock::now());
  return out;
}

AccessRecord record(ListenerKind listener, bool allowed, CloseReason reason) {
  AccessRecord r;
  r.listener = listenerKindName(listener);
  r.allowed = allowed;
  r.reason = closeReasonName(reason);
  r.total_ms = 3;
  r.decision_ms = allowed ? 1.5 : -1;
  return r;
}

void recordConnection(Metrics& metrics, ListenerKind listener, bool allowed, CloseReason reason) {
  metrics.recordConnection(listener, reason, record(listener, allowed, reason));
}

// Every line of a rendering with data in every family is a HELP, TYPE or sample line in the
// strict grammar, each family HELP'd and TYPE'd once before its samples.
TEST(MetricsTest, RendersStrictExpositionFormat) {
  Metrics metrics;
  recordConnection(metrics, ListenerKind::kConnect, true, CloseReason::kHostAllowed);
  recordConnection(metrics, ListenerKind::kSni, false, CloseReason::kHostNotAllowed);
  metrics.recordReload(true);
  metrics.recordReload(false);
  metrics.onCacheHit();
  metrics.onCacheMiss();
  metrics.onResolution(DnsStatus::kOk, std::chrono::milliseconds(3));
  metrics.onResolution(DnsStatus::kTimeout, std::chrono::milliseconds(5000));
  metrics.onResolution(DnsStatus::kTimeout, std::chrono::milliseconds(5000));
  metrics.onResolution(DnsStatus::kFailure, std::chrono::milliseconds(1));
  metrics.onChannelReset();
  const Exposition exposition = parseStrict(render(metrics));
  EXPECT_EQ(exposition.types.at("acr_egress_connections_total"), "counter");
  EXPECT_EQ(exposition.types.at("acr_egress_active_connections"), "gauge");
  EXPECT_EQ(exposition.types.at("acr_egress_active_tunnels"), "gauge");
  EXPECT_EQ(exposition.types.at("acr_egress_dns_lookup_duration_seconds"), "histogram");
  EXPECT_EQ(exposition.types.at("acr_egress_decision_duration_seconds"), "histogram");
  EXPECT_EQ(exposition.types.at("acr_egress_policy_generation"), "gauge");
  std::map<std::string, double> values;
  for (const Sample& sample : exposition.samples) {
    values[sample.name + "{" + sample.labels + "}"] = sample.value;
  }
  EXPECT_EQ(
      values.at(
          R"(acr_egress_connections_total{listener="connect",decision="allow",reason="host_allowed"})"),
      1);
  EXPECT_EQ(
      values.at(
          R"(acr_egress_connections_total{listener="sni",decision="deny",reason="host_not_allowed"})"),
      1);
  EXPECT_EQ(values.at(R"(acr_egress_reloads_total{result="ok"})"), 1);
  EXPECT_EQ(values.at(R"(acr_egress_reloads_total{result="failed"})"), 1);
  EXPECT_EQ(values.at("acr_egress_accepted_total{}"), 7);
  EXPECT_EQ(values.at("acr_egress_rejected_overload_total{}"), 2);
  EXPECT_EQ(values.at("acr_egress_accept_errors_total{}"), 1);
  EXPECT_EQ(values.at("acr_egress_dns_cache_hits_total{}"), 1);
  EXPECT_EQ(values.at("acr_egress_dns_cache_misses_total{}"), 1);
  EXPECT_EQ(values.at("acr_egress_dns_lookup_duration_seconds_count{}"), 4);
  EXPECT_DOUBLE_EQ(values.at("acr_egress_dns_lookup_duration_seconds_sum{}"), 10.004);
  EXPECT_EQ(values.at(R"(acr_egress_dns_resolutions_total{status="ok"})"), 1);
  EXPECT_EQ(values.at(R"(acr_egress_dns_resolutions_total{status="timeout"})"), 2);
  EXPECT_EQ(values.at(R"(acr_egress_dns_resolutions_total{status="failure"})"), 1);
  EXPECT_EQ(values.at(R"(acr_egress_dns_resolutions_total{status="nxdomain"})"), 0);
  EXPECT_EQ(values.at("acr_egress_dns_channel_resets_total{}"), 1);
  EXPECT_EQ(values.at("acr_egress_decision_duration_seconds_count{}"), 2);
}

// Client groups: a series per group name, made once and kept (a second registration of the same
// name, as by a reload keeping the group, returns the same series and its counts continue);
// records count under their group_series; a record without one counts in no group.
TEST(MetricsTest, GroupSeriesAreStableAcrossRegistrations) {
  Metrics metrics;
  EXPECT_EQ(parseStrict(render(metrics)).types.count("acr_egress_group_connections_total"), 0u);
  const uint32_t build = metrics.groupSeries("build");
  const uint32_t device = metrics.groupSeries("de\"vice");
  EXPECT_NE(build, device);
  AccessRecord allowed = record(ListenerKind::kConnect, true, CloseReason::kHostAllowed);
  allowed.group_series = build;
  metrics.recordConnection(ListenerKind::kConnect, CloseReason::kHostAllowed, allowed);
  EXPECT_EQ(metrics.groupSeries("build"), build);  // a reload keeping the group
  metrics.recordConnection(ListenerKind::kConnect, CloseReason::kHostAllowed, allowed);
  AccessRecord denied = record(ListenerKind::kConnect, false, CloseReason::kHostNotAllowed);
  denied.group_series = device;
  metrics.recordConnection(ListenerKind::kConnect, CloseReason::kHostNotAllowed, denied);
  recordConnection(metrics, ListenerKind::kConnect, true, CloseReason::kHostAllowed);  // no group
  const uint32_t lab = metrics.groupSeries("lab");  // a reload adding a group
  const Exposition exposition = parseStrict(render(metrics));
  EXPECT_EQ(exposition.types.at("acr_egress_group_connections_total"), "counter");
  std::map<std::string, double> values;
  for (const Sample& sample : exposition.samples) {
    values[sample.name + "{" + sample.labels + "}"] = sample.value;
  }
  EXPECT_EQ(values.at(R"(acr_egress_group_connections_total{group="build",decision="allow"})"), 2);
  EXPECT_EQ(values.at(R"(acr_egress_group_connections_total{group="build",decision="deny"})"), 0);
  EXPECT_EQ(values.at(R"(acr_egress_group_connections_total{group="de\"vice",decision="deny"})"),
            1);
  EXPECT_EQ(values.at(R"(acr_egress_group_connections_total{group="lab",decision="allow"})"), 0);
  EXPECT_EQ(metrics.groupCount(lab, Outcome::kWouldDeny), 0u);
  EXPECT_EQ(metrics.groupCount(Metrics::kNoGroupSeries, Outcome::kAllow), 0u);
}

// Histogram buckets are cumulative and never decrease, the +Inf bucket equals _count, and an
// observation lands in the first bucket whose bound is not below it.
TEST(MetricsTest, HistogramBucketsAreCumulative) {
  Metrics metrics;
  for (const int ms : {0, 1, 1, 4, 30, 700, 20'000}) {
    metrics.onResolution(DnsStatus::kOk, std::chrono::milliseconds(ms));
  }
  const Exposition exposition = parseStrict(render(metrics));
  std::vector<std::pair<std::string, double>> buckets;
  double count = -1;
  double sum = -1;
  for (const Sample& sample : exposition.samples) {
    if (sample.name == "acr_egress_dns_lookup_duration_seconds_bucket") {
      ASSERT_EQ(sample.labels.rfind("le=\"", 0), 0u) << sample.labels;
      buckets.emplace_back(sample.labels.substr(4, sample.labels.size() - 5), sample.value);
    } else if (sample.name == "acr_egress_dns_lookup_duration_seconds_count") {
      count = sample.value;
    } else if (sample.name == "acr_egress_dns_lookup_duration_seconds_sum") {
      sum = sample.value;
    }
  }
  ASSERT_EQ(buckets.size(), LatencyHistogram::kBounds.size() + 1);
  EXPECT_EQ(buckets.back().first, "+Inf");
  EXPECT_EQ(buckets.back().second, count);
  EXPECT_EQ(count, 7);
  EXPECT_NEAR(sum, 20.736, 1e-9);
  double previous_bound = -1;
  double previous_count = 0;
  for (size_t i = 0; i < buckets.size(); ++i) {
    const double bound = buckets[i].first == "+Inf" ? INFINITY : std::stod(buckets[i].first);
    EXPECT_GT(bound, previous_bound);
    EXPECT_GE(buckets[i].second, previous_count) << buckets[i].first;
    previous_bound = bound;
    previous_count = buckets[i].second;
  }
  std::map<std::string, double> by_le(buckets.begin(), buckets.end());
  EXPECT_EQ(by_le.at("0.0005"), 1);  // 0 ms
  EXPECT_EQ(by_le.at("0.001"), 3);   // + two at exactly 1 ms
  EXPECT_EQ(by_le.at("0.005"), 4);
  EXPECT_EQ(by_le.at("0.05"), 5);
  EXPECT_EQ(by_le.at("1"), 6);
  EXPECT_EQ(by_le.at("10"), 6);  // 20 s is only in +Inf
}

// Label values escape backslash, double quote and newline.
TEST(MetricsTest, EscapesLabelValues) {
  std::string out;
  Metrics::appendLabelValue(out, "a\\b\"c\nd");
  EXPECT_EQ(out, "a\\\\b\\\"c\\nd");
}

// Without a service-tags file the change-number and file-age families have no sample; with one
// they report its changeNumber and a small, non-negative age.
TEST(MetricsTest, ServiceTagsGauges) {
  Metrics metrics;
  PolicySnapshot snapshot;
  metrics.recordPolicy(snapshot);
  std::string text = render(metrics);
  parseStrict(text);
  EXPECT_EQ(text.find("\nacr_egress_service_tags_change_number "), std::string::npos);
  EXPECT_NE(text.find("\nacr_egress_policy_generation 1\n"), std::string::npos);

  snapshot.service_tags_change_number = 321;
  snapshot.service_tags_path = std::string(ACR_SOURCE_DIR) + "/README.md";
  metrics.recordPolicy(snapshot);
  text = render(metrics);
  const Exposition exposition = parseStrict(text);
  EXPECT_NE(text.find("\nacr_egress_service_tags_change_number 321\n"), std::string::npos);
  EXPECT_NE(text.find("\nacr_egress_policy_generation 2\n"), std::string::npos);
  bool found_age = false;
  for (const Sample& sample : exposition.samples) {
    if (sample.name == "acr_egress_service_tags_file_age_seconds") {
      found_age = true;
      EXPECT_GE(sample.value, 0);
    }
  }
  EXPECT_TRUE(found_age) << text;
}

// Concurrent updates from several threads lose no count.
TEST(MetricsTest, CountsFromManyThreads) {
  Metrics metrics;
  std::vector<std::thread> threads;
  const CloseReason reasons[] = {CloseReason::kHostAllowed, CloseReason::kHostNotAllowed,
                                 CloseReason::kPortNotAllowed, CloseReason::kDnsTimeout};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&metrics, &reasons] {
      for (int i = 0; i < 4000; ++i) {
        recordConnection(metrics, i % 2 ? ListenerKind::kConnect : ListenerKind::kSni, i % 4 == 0,
                         reasons[i % 4]);
        metrics.onResolution(DnsStatus::kOk, std::chrono::microseconds(i));
      }
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  const Exposition exposition = parseStrict(render(metrics));
  double connections = 0;
  for (const Sample& sample : exposition.samples) {
    if (sample.name == "acr_egress_connections_total") {
      connections += sample.value;
    }
    if (sample.name == "acr_egress_dns_lookup_duration_seconds_count") {
      EXPECT_EQ(sample.value, 16000);
    }
  }
  EXPECT_EQ(connections, 16000);
}

// Every (listener, decision, reason) key has a counter of its own: counting each key a different
// number of times renders each count under its own labels, and nothing under "other".
TEST(MetricsTest, EveryKeyHasItsOwnCounter) {
  Metrics metrics;
  uint64_t expected_total = 0;
  std::map<std::string, double> expected;
  for (const ListenerKind listener :
       {ListenerKind::kConnect, ListenerKind::kTransparent, ListenerKind::kSni}) {
    for (size_t r = 0; r < kCloseReasonCount; ++r) {
      const auto reason = static_cast<CloseReason>(r);
      for (const bool allowed : {false, true}) {
        const size_t times = 1 + (r + static_cast<size_t>(listener) + (allowed ? 1 : 0)) % 3;
        for (size_t i = 0; i < times; ++i) {
          recordConnection(metrics, listener, allowed, reason);
        }
        expected_total += times;
        expected[std::string("acr_egress_connections_total{listener=\"") +
                 std::string(listenerKindName(listener)) + "\",decision=\"" +
                 (allowed ? "allow" : "deny") + "\",reason=\"" +
                 std::string(closeReasonName(reason)) + "\"}"] = static_cast<double>(times);
        EXPECT_EQ(metrics.connections().count(listener, allowed ? Outcome::kAllow : Outcome::kDeny,
                                              reason),
                  times);
      }
    }
  }
  const Exposition exposition = parseStrict(render(metrics));
  std::map<std::string, double> rendered;
  for (const Sample& sample : exposition.samples) {
    if (sample.name == "acr_egress_connections_total") {
      rendered[sample.name + "{" + sample.labels + "}"] = sample.value;
    }
  }
  EXPECT_EQ(rendered, expected);
  EXPECT_EQ(expected.size(), 3 * 2 * kCloseReasonCount);
  EXPECT_GT(expected_total, 0u);
}

}  // namespace
}  // namespace acr
