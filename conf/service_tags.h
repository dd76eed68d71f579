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
// Nothing the policy uses is skipped; members it does not use are skipped whatever their shape, and
// a member it uses given twice in one object is refused (which one would count is ambiguous).
class ServiceTags {
 public:
  static ServiceTags load(const std::string& path);
  static ServiceTags parse(std::string_view json, const std::string& source);

  // The tag whose name is exactly `name` (names are case-sensitive, as in the file), or nullptr.
  const ServiceTag* find(std::string_view name) const noexcept;
  // Up to `limit` existing names closest to `name` (case-insensitive edit distance), best first.
  std::vector<std::string> suggest(std::string_view name, size_t limit = 3) const;

  int64_t changeNumber() const noexcept { return contents_.change_number; }
  const std::string& cloud() const noexcept { return contents_.cloud; }
  const std::vector<ServiceTag>& tags() const noexcept { return contents_.tags; }
  const std::string& source() const noexcept { return source_; }

  // A file larger than this is refused before it is read (Azure's is about 4 MB).
  static constexpr int64_t kMaxFileSize = int64_t{64} << 20;

  // What the file holds, filled by the loader's SAX handler.
  struct Contents {
    int64_t change_number = 0;
    std::string cloud;
    std::vector<ServiceTag> tags;
    std::unordered_map<std::string, size_t> by_name;
  };

 private:
  std::string source_;
  Contents contents_;
};

}  // namespace acr
