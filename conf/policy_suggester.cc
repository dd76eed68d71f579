#include "conf/policy_suggester.h"

#include <rapidjson/document.h>

#include <algorithm>
#include <optional>
#include <set>
#include <vector>

#include "filters/host_name.h"
#include "filters/ip_address.h"

namespace acr {
namespace {

// An ACR endpoint: REGISTRY.azurecr.io (region empty), REGISTRY.REGION.data.azurecr.io or
// REGISTRY.REGION.geo.azurecr.io.
struct AcrName {
  std::string registry;
  std::string region;
};

std::optional<AcrName> parseAcrName(std::string_view name) {
  std::vector<std::string_view> labels;
  size_t start = 0;
  while (start <= name.size()) {
    const size_t dot = name.find('.', start);
    const size_t end = dot == std::string_view::npos ? name.size() : dot;
    labels.push_back(name.substr(start, end - start));
    start = end + 1;
  }
  const size_t n = labels.size();
  if (n == 3 && labels[1] == "azurecr" && labels[2] == "io") {
    return AcrName{std::string(labels[0]), ""};
  }
  if (n == 5 && (labels[2] == "data" || labels[2] == "geo") && labels[3] == "azurecr" &&
      labels[4] == "io") {
    return AcrName{std::string(labels[0]), std::string(labels[1])};
  }
  return std::nullopt;
}

std::string comment(uint64_t count) {
  return count == 1 ? "  # 1 connection" : "  # " + std::to_string(count) + " connections";
}

void appendList(std::string& out, const char* key,
                const std::vector<std::pair<std::string, uint64_t>>& items, bool quoted) {
  if (items.empty()) {
    return;
  }
  out += std::string(key) + " = [\n";
  for (const auto& [text, count] : items) {
    out += "  " + (quoted ? "\"" + text + "\"" : text) + "," + comment(count) + "\n";
  }
  out += "]\n";
}

}  // namespace

PolicySuggester::LineStatus PolicySuggester::addLine(std::string_view line) {
  rapidjson::Document document;
  document.Parse(line.data(), line.size());
  if (document.HasParseError() || !document.IsObject()) {
    return LineStatus::kUnreadable;
  }
  // Const iterators on both sides: clang's C++20 reversed-operator check rejects mixing them.
  const rapidjson::Document& doc = document;
  const auto decision = doc.FindMember("decision");
  if (decision == doc.MemberEnd() || !decision->value.IsString() ||
      std::string_view(decision->value.GetString()) != "allow") {
    return LineStatus::kIgnored;
  }
  const auto target = doc.FindMember("target");
  const auto port = doc.FindMember("port");
  if (target == doc.MemberEnd() || !target->value.IsString() ||
      target->value.GetStringLength() == 0) {
    return LineStatus::kIgnored;  // e.g. a transparent connection allowed without SNI
  }
  if (port == doc.MemberEnd() || !port->value.IsUint() || port->value.GetUint() == 0 ||
      port->value.GetUint() > 65535) {
    return LineStatus::kUnreadable;
  }
  const std::string_view text(target->value.GetString(), target->value.GetStringLength());
  return addConnection(text, static_cast<uint16_t>(port->value.GetUint()))
             ? LineStatus::kCounted
             : LineStatus::kUnreadable;
}

bool PolicySuggester::addConnection(std::string_view target, uint16_t port) {
  std::string key;
  if (const auto literal = IpAddress::parse(target)) {
    key = literal->toString();
  } else {
    HostName name;
    if (HostName::normalize(target, name) != HostName::Status::kOk) {
      return false;
    }
    key = std::string(name.view());
  }
  ++hosts_[key];
  ++ports_[port];
  ++connections_;
  return true;
}

std::string PolicySuggester::toToml(uint64_t min_count) const {
  struct Registry {
    uint64_t count = 0;
    std::map<std::string, uint64_t> regions;  // data and geo endpoints
    std::vector<std::pair<std::string, uint64_t>> names;
  };
  std::map<std::string, Registry> registries;
  std::vector<std::pair<std::string, uint64_t>> hosts;
  std::vector<std::pair<std::string, uint64_t>> cidrs;
  for (const auto& [key, count] : hosts_) {
    if (count < min_count) {
      continue;
    }
    if (const auto literal = IpAddress::parse(key)) {
      cidrs.emplace_back(key + (literal->isV4() ? "/32" : "/128"), count);
    } else if (const auto acr = parseAcrName(key)) {
      Registry& registry = registries[acr->registry];
      registry.count += count;
      if (!acr->region.empty()) {
        registry.regions[acr->region] += count;
      }
      registry.names.emplace_back(key, count);
    } else {
      hosts.emplace_back(key, count);
    }
  }
  // The regions written: those of the busiest registry that was seen in some region.
  std::set<std::string> regions;
  uint64_t busiest = 0;
  for (const auto& [name, registry] : registries) {
    if (!registry.regions.empty() && registry.count > busiest) {
      busiest = registry.count;
      regions.clear();
      for (const auto& [region, count] : registry.regions) {
        regions.insert(region);
      }
    }
  }
  std::vector<std::pair<std::string, uint64_t>> registry_items;
  std::map<std::string, uint64_t> region_counts;
  for (const auto& [name, registry] : registries) {
    std::set<std::string> seen;
    for (const auto& [region, count] : registry.regions) {
      seen.insert(region);
    }
    if (!regions.empty() && seen == regions) {
      registry_items.emplace_back(name, registry.count);
      for (const auto& [region, count] : registry.regions) {
        region_counts[region] += count;
      }
    } else {
      hosts.insert(hosts.end(), registry.names.begin(), registry.names.end());
    }
  }
  std::sort(hosts.begin(), hosts.end());
  std::vector<std::pair<std::string, uint64_t>> ports;
  for (const auto& [port, count] : ports_) {
    if (count >= min_count) {
      ports.emplace_back(std::to_string(port), count);
    }
  }
  // Without a host rule the configuration would fall back to the embedded default: refuse.
  if ((registry_items.empty() && hosts.empty()) || ports.empty()) {
    return {};
  }
  std::string out = "[policy]\n";
  appendList(out, "registries", registry_items, true);
  appendList(
      out, "regions",
      std::vector<std::pair<std::string, uint64_t>>(region_counts.begin(), region_counts.end()),
      true);
  appendList(out, "allow_hosts", hosts, true);
  appendList(out, "allow_cidrs", cidrs, true);
  appendList(out, "ports", ports, false);
  return out;
}

}  // namespace acr
