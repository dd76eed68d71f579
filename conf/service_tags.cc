#include "conf/service_tags.h"

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include "conf/config.h"

namespace acr {
namespace {

using JsonValue = rapidjson::Value;

[[noreturn]] void fail(const std::string& source, const std::string& path,
                       const std::string& what) {
  throw ConfigError(source + ": " + path + ": " + what);
}

// Member lookup without comparing RapidJSON member iterators, which C++20's reversed operators
// make ambiguous under clang.
const JsonValue* findMember(const JsonValue& object, const char* name) {
  return object.HasMember(name) ? &object[name] : nullptr;
}

const JsonValue& member(const std::string& source, const std::string& path, const JsonValue& object,
                        const char* name) {
  const JsonValue* value = findMember(object, name);
  if (value == nullptr) {
    fail(source, path, std::string("missing \"") + name + "\"");
  }
  return *value;
}

std::string lineAndColumn(std::string_view text, size_t offset) {
  size_t line = 1;
  size_t column = 1;
  for (size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return std::to_string(line) + ":" + std::to_string(column);
}

size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      const bool same = std::tolower(static_cast<unsigned char>(a[i - 1])) ==
                        std::tolower(static_cast<unsigned char>(b[j - 1]));
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (same ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

}  // namespace

ServiceTags ServiceTags::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw ConfigError(path + ": cannot open the service-tags file");
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    throw ConfigError(path + ": cannot read the service-tags file");
  }
  return parse(text.str(), path);
}

ServiceTags ServiceTags::parse(std::string_view json, const std::string& source) {
  if (json.empty()) {
    throw ConfigError(source + ": the service-tags file is empty");
  }
  rapidjson::Document document;
  document.Parse(json.data(), json.size());
  if (document.HasParseError()) {
    throw ConfigError(source + ":" + lineAndColumn(json, document.GetErrorOffset()) +
                      ": invalid JSON: " + rapidjson::GetParseError_En(document.GetParseError()));
  }
  if (!document.IsObject()) {
    fail(source, "$", "the top level must be an object");
  }
  ServiceTags tags;
  tags.source_ = source;
  const JsonValue& change = member(source, "$", document, "changeNumber");
  if (!change.IsInt64() || change.GetInt64() < 0) {
    fail(source, "$.changeNumber", "must be a non-negative integer");
  }
  tags.change_number_ = change.GetInt64();
  if (const JsonValue* cloud = findMember(document, "cloud")) {
    if (!cloud->IsString()) {
      fail(source, "$.cloud", "must be a string");
    }
    tags.cloud_ = cloud->GetString();
  }
  const JsonValue& values = member(source, "$", document, "values");
  if (!values.IsArray()) {
    fail(source, "$.values", "must be an array");
  }
  tags.tags_.reserve(values.Size());
  for (rapidjson::SizeType i = 0; i < values.Size(); ++i) {
    const std::string path = "$.values[" + std::to_string(i) + "]";
    const JsonValue& value = values[i];
    if (!value.IsObject()) {
      fail(source, path, "must be an object");
    }
    const JsonValue& name = member(source, path, value, "name");
    if (!name.IsString() || name.GetStringLength() == 0) {
      fail(source, path + ".name", "must be a non-empty string");
    }
    ServiceTag tag;
    tag.name.assign(name.GetString(), name.GetStringLength());
    const JsonValue& properties = member(source, path, value, "properties");
    if (!properties.IsObject()) {
      fail(source, path + ".properties", "must be an object");
    }
    if (const JsonValue* region = findMember(properties, "region")) {
      if (!region->IsString()) {
        fail(source, path + ".properties.region", "must be a string");
      }
      tag.region = region->GetString();
    }
    const std::string prefixes_path = path + ".properties.addressPrefixes";
    const JsonValue& prefixes = member(source, path + ".properties", properties, "addressPrefixes");
    if (!prefixes.IsArray()) {
      fail(source, prefixes_path, "must be an array");
    }
    tag.prefixes.reserve(prefixes.Size());
    for (rapidjson::SizeType j = 0; j < prefixes.Size(); ++j) {
      const JsonValue& prefix = prefixes[j];
      if (!prefix.IsString()) {
        fail(source, prefixes_path + "[" + std::to_string(j) + "]", "must be a string");
      }
      std::string error;
      const auto cidr =
          Cidr::parse(std::string_view(prefix.GetString(), prefix.GetStringLength()), &error);
      if (!cidr) {
        fail(source, prefixes_path + "[" + std::to_string(j) + "]", error);
      }
      tag.prefixes.push_back(*cidr);
    }
    if (!tags.by_name_.emplace(tag.name, tags.tags_.size()).second) {
      fail(source, path + ".name", "duplicate tag name '" + tag.name + "'");
    }
    tags.tags_.push_back(std::move(tag));
  }
  return tags;
}

const ServiceTag* ServiceTags::find(std::string_view name) const noexcept {
  const auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : &tags_[it->second];
}

std::vector<std::string> ServiceTags::suggest(std::string_view name, size_t limit) const {
  std::vector<std::pair<size_t, const std::string*>> scored;
  scored.reserve(tags_.size());
  for (const ServiceTag& tag : tags_) {
    scored.emplace_back(editDistance(name, tag.name), &tag.name);
  }
  const size_t count = std::min(limit, scored.size());
  std::partial_sort(scored.begin(), scored.begin() + static_cast<std::ptrdiff_t>(count),
                    scored.end(), [](const auto& a, const auto& b) {
                      return a.first != b.first ? a.first < b.first : *a.second < *b.second;
                    });
  std::vector<std::string> names;
  for (size_t i = 0; i < count; ++i) {
    names.push_back(*scored[i].second);
  }
  return names;
}

}  // namespace acr
