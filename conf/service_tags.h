#pragma once

#include <cstdint>
#include <string>
#include <string_view>
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

// A service-tags file in the format of Azure's ServiceTags_Public.json, validated: the whole file
// must be JSON, every value of the schema we rely on is checked, and every prefix of every tag kept
// is parsed strictly. Anything wrong throws ConfigError naming the file and the JSON path (or line
// and column of a syntax error). Members the policy does not use are skipped whatever their shape,
// and a member it uses given twice in one object is refused (which one would count is ambiguous).
class ServiceTags {
 public:
  // `keep`: the names of the tags that are kept whole, prefixes parsed; null keeps every tag. Of
  // the others only the name is kept (for known() and suggest()). The policy uses two or three of
  // Azure's ~3,000 tags and ~1,700 of its ~96,000 prefixes: parsing and holding all of them was
  // most of the start-up time and its memory (bench/e2e/PROFILE.md section 8). A prefix of a tag
  // not kept is checked to be a string; when a tag's "properties" come before its "name" (never in
  // Azure's files), its prefixes are parsed before it is known whether they are kept, and so
  // checked strictly.
  static ServiceTags load(const std::string& path, const std::vector<std::string>* keep = nullptr);
  static ServiceTags parse(std::string_view json, const std::string& source,
                           const std::vector<std::string>* keep = nullptr);

  // The kept tag whose name is exactly `name` (names are case-sensitive, as in the file), or
  // nullptr.
  const ServiceTag* find(std::string_view name) const noexcept;
  // Whether the file has a tag named exactly `name`, kept or not.
  bool known(std::string_view name) const noexcept;
  // Up to `limit` existing names closest to `name` (case-insensitive edit distance), best first.
  std::vector<std::string> suggest(std::string_view name, size_t limit = 3) const;

  int64_t changeNumber() const noexcept { return contents_.change_number; }
  const std::string& cloud() const noexcept { return contents_.cloud; }
  // The kept tags (every tag when loaded without a selection), in the file's order.
  const std::vector<ServiceTag>& tags() const noexcept { return contents_.tags; }
  // Every tag in the file, kept or not.
  size_t tagCount() const noexcept { return contents_.name_ends.size(); }
  const std::string& source() const noexcept { return source_; }

  // A file larger than this is refused before it is read (Azure's is about 4 MB).
  static constexpr int64_t kMaxFileSize = int64_t{64} << 20;

  // What the file holds, filled by the loader's SAX handler.
  struct Contents {
    int64_t change_number = 0;
    std::string cloud;
    std::vector<ServiceTag> tags;
    // Every tag's name back to back in the file's order: name i ends at name_ends[i] and starts
    // where name i - 1 ends. One buffer, not a string and a hash node per tag: with ~3,000 tags
    // those were ~200 page faults of the start-up.
    std::string names;
    std::vector<uint32_t> name_ends;
    std::vector<uint32_t> by_name;  // name indices sorted by name
    std::vector<uint32_t> kept;     // name index -> index in `tags`, or kNone (not kept)
    static constexpr uint32_t kNone = ~uint32_t{0};  // no such index

    std::string_view name(uint32_t i) const {
      const uint32_t begin = i == 0 ? 0 : name_ends[i - 1];
      return std::string_view(names).substr(begin, name_ends[i] - begin);
    }
    // The index of the name `name`, or kNone.
    uint32_t indexOf(std::string_view name) const noexcept;
  };

 private:
  // Sorts the names for lookups; refuses a name given twice.
  void indexNames();

  std::string source_;
  Contents contents_;
};

}  // namespace acr
