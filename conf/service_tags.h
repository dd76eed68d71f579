#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "filters/ip_address.h"

namespace acr {

// One entry of Azure's service-tags file: {"name", "id", "properties": {"region",
// "addressPrefixes": [...], ...}}.
struct ServiceTag {
  std::string name;
  std::string region;
  std::vector<Cidr> prefixes;
};

// A service-tags file in the format of Azure's ServiceTags_Public.json, fully validated: every
// value of the schema we rely on is checked and every prefix parsed strictly. Anything wrong
// throws ConfigError naming the file and the JSON path (or line and column of a syntax error).
// Nothing is skipped.
class ServiceTags {
 public:
  static ServiceTags load(const std::string& path);
  static ServiceTags parse(std::string_view json, const std::string& source);

  // The tag whose name is exactly `name` (names are case-sensitive, as in the file), or nullptr.
  const ServiceTag* find(std::string_view name) const noexcept;
  // Up to `limit` existing names closest to `name` (case-insensitive edit distance), best first.
  std::vector<std::string> suggest(std::string_view name, size_t limit = 3) const;

  int64_t changeNumber() const noexcept { return change_number_; }
  const std::string& cloud() const noexcept { return cloud_; }
  const std::vector<ServiceTag>& tags() const noexcept { return tags_; }
  const std::string& source() const noexcept { return source_; }

 private:
  std::string source_;
  int64_t change_number_ = 0;
  std::string cloud_;
  std::vector<ServiceTag> tags_;
  std::unordered_map<std::string, size_t> by_name_;
};

}  // namespace acr
