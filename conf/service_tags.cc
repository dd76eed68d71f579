#include "conf/service_tags.h"

#include <fcntl.h>
#include <rapidjson/error/en.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <memory>

#include "conf/config.h"

namespace acr {
namespace {

[[noreturn]] void fail(const std::string& source, const std::string& path,
                       const std::string& what) {
  throw ConfigError(source + ": " + path + ": " + what);
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

// Reads the file whole into a buffer of its size, not zero-filled first: a stringstream copied
// the 4 MB file three times, and zero-filling a std::string first costs as much as the read
// (both are the first touch of fresh pages).
ServiceTags ServiceTags::load(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw ConfigError(path + ": cannot open the service-tags file: " + std::strerror(errno));
  }
  std::unique_ptr<char[]> text;
  size_t size = 0;
  std::string error;
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    error = std::strerror(errno);
  } else if (!S_ISREG(info.st_mode)) {
    error = "not a regular file";
  } else if (info.st_size > kMaxFileSize) {
    error = "larger than " + std::to_string(kMaxFileSize >> 20) + " MiB";
  } else {
    size = static_cast<size_t>(info.st_size);
    text = std::make_unique_for_overwrite<char[]>(size);
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::read(fd, text.get() + done, size - done);
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n <= 0) {
        error = n < 0 ? std::strerror(errno) : "the file shrank while it was read";
        break;
      }
      done += static_cast<size_t>(n);
    }
  }
  ::close(fd);
  if (!error.empty()) {
    throw ConfigError(path + ": cannot read the service-tags file: " + error);
  }
  return parse(std::string_view(text.get(), size), path);
}

namespace {

// The schema as a SAX handler: RapidJSON's Reader calls it once per token, so the file is checked
// and turned into ServiceTag values in one pass, without a DOM (the DOM of the 4 MB file was
// ~15 MB of allocations and most of the loader's time and page faults). Each open object or
// array is a Frame saying what it is; a member's value is dispatched on the member the last Key
// named. Members the loader does not use are skipped whatever their shape. A JSON path is built
// only for an error message.
class ServiceTagsReader
    : public rapidjson::BaseReaderHandler<rapidjson::UTF8<>, ServiceTagsReader> {
 public:
  ServiceTagsReader(const std::string& source, ServiceTags::Contents& out)
      : source_(source), out_(out) {}

  bool StartObject() {
    switch (valueSlot()) {
      case Slot::kRoot:
        push(Frame::kTop);
        return true;
      case Slot::kTag:
        tag_ = ServiceTag{};
        seen_ = 0;
        push(Frame::kTag);
        return true;
      case Slot::kProperties:
        push(Frame::kProperties);
        return true;
      case Slot::kUnused:
        push(Frame::kSkip);
        return true;
      default:
        wrongType();
    }
  }
  bool Key(const char* text, rapidjson::SizeType length, bool /*copy*/) {
    if (frames_.back() == Frame::kSkip) {
      return true;
    }
    const std::string_view key(text, length);
    member_ = Slot::kUnused;
    for (const Member& m : kMembers) {
      if (m.frame == frames_.back() && key == m.name) {
        member_ = m.slot;
        break;
      }
    }
    if (member_ != Slot::kUnused) {
      const uint32_t bit = 1u << static_cast<unsigned>(member_);
      uint32_t& seen = frames_.back() == Frame::kTop ? top_seen_ : seen_;
      if ((seen & bit) != 0) {
        fail(source_, framePath(), "duplicate member \"" + std::string(key) + "\"");
      }
      seen |= bit;
    }
    return true;
  }
  bool EndObject(rapidjson::SizeType /*members*/) {
    switch (frames_.back()) {
      case Frame::kTop:
        require(top_seen_, Slot::kChangeNumber, "$", "changeNumber");
        require(top_seen_, Slot::kValues, "$", "values");
        break;
      case Frame::kTag: {
        const std::string path = tagPath();
        require(seen_, Slot::kName, path, "name");
        require(seen_, Slot::kProperties, path, "properties");
        if (!out_.by_name.emplace(tag_.name, out_.tags.size()).second) {
          fail(source_, path + ".name", "duplicate tag name '" + tag_.name + "'");
        }
        out_.tags.push_back(std::move(tag_));
        ++tag_index_;
        break;
      }
      case Frame::kProperties:
        require(seen_, Slot::kAddressPrefixes, tagPath() + ".properties", "addressPrefixes");
        break;
      default:
        break;
    }
    pop();
    return true;
  }
  bool StartArray() {
    switch (valueSlot()) {
      case Slot::kValues:
        push(Frame::kValues);
        return true;
      case Slot::kAddressPrefixes:
        prefix_index_ = 0;
        push(Frame::kPrefixes);
        return true;
      case Slot::kUnused:
        push(Frame::kSkip);
        return true;
      default:
        wrongType();
    }
  }
  bool EndArray(rapidjson::SizeType /*elements*/) {
    pop();
    return true;
  }
  bool String(const char* text, rapidjson::SizeType length, bool /*copy*/) {
    const std::string_view value(text, length);
    switch (valueSlot()) {
      case Slot::kCloud:
        out_.cloud.assign(value);
        return true;
      case Slot::kName:
        if (value.empty()) {
          wrongType();
        }
        tag_.name.assign(value);
        return true;
      case Slot::kRegion:
        tag_.region.assign(value);
        return true;
      case Slot::kPrefix: {
        std::string error;
        const auto cidr = Cidr::parse(value, &error);
        if (!cidr) {
          fail(source_, prefixPath(), error);
        }
        tag_.prefixes.push_back(*cidr);
        ++prefix_index_;
        return true;
      }
      case Slot::kUnused:
        return true;
      default:
        wrongType();
    }
  }
  bool Int(int value) { return Int64(value); }
  bool Uint(unsigned value) { return Uint64(value); }
  bool Int64(int64_t value) {
    if (value < 0) {
      return Default();
    }
    return Uint64(static_cast<uint64_t>(value));
  }
  bool Uint64(uint64_t value) {
    if (valueSlot() == Slot::kChangeNumber && value <= INT64_MAX) {
      out_.change_number = static_cast<int64_t>(value);
      return true;
    }
    return Default();
  }
  // Null, booleans, doubles, and the integers no slot takes.
  bool Default() {
    if (valueSlot() != Slot::kUnused) {
      wrongType();
    }
    return true;
  }

 private:
  // What a value is for: a member of the schema, an element of an array of the schema, or
  // something the loader does not use.
  enum class Slot : uint8_t {
    kChangeNumber,
    kCloud,
    kValues,
    kName,
    kProperties,
    kRegion,
    kAddressPrefixes,
    kRoot,
    kTag,     // an element of $.values
    kPrefix,  // an element of addressPrefixes
    kUnused,
  };
  enum class Frame : uint8_t { kTop, kValues, kTag, kProperties, kPrefixes, kSkip };
  struct Member {
    Frame frame;
    const char* name;
    Slot slot;
  };
  static constexpr Member kMembers[] = {
      {Frame::kTop, "changeNumber", Slot::kChangeNumber},
      {Frame::kTop, "cloud", Slot::kCloud},
      {Frame::kTop, "values", Slot::kValues},
      {Frame::kTag, "name", Slot::kName},
      {Frame::kTag, "properties", Slot::kProperties},
      {Frame::kProperties, "region", Slot::kRegion},
      {Frame::kProperties, "addressPrefixes", Slot::kAddressPrefixes},
  };
  // What the schema says of each slot's value, for the error when it is something else.
  static const char* expectation(Slot slot) {
    switch (slot) {
      case Slot::kRoot:
        return "the top level must be an object";
      case Slot::kChangeNumber:
        return "must be a non-negative integer";
      case Slot::kValues:
      case Slot::kAddressPrefixes:
        return "must be an array";
      case Slot::kTag:
      case Slot::kProperties:
        return "must be an object";
      case Slot::kName:
        return "must be a non-empty string";
      default:
        return "must be a string";
    }
  }

  // The slot of the value that starts now.
  Slot valueSlot() const {
    if (frames_.empty()) {
      return Slot::kRoot;
    }
    switch (frames_.back()) {
      case Frame::kValues:
        return Slot::kTag;
      case Frame::kPrefixes:
        return Slot::kPrefix;
      case Frame::kSkip:
        return Slot::kUnused;
      default:
        return member_;
    }
  }
  [[noreturn]] void wrongType() const {
    const Slot slot = valueSlot();
    fail(source_, slotPath(slot), expectation(slot));
  }
  void require(uint32_t seen, Slot slot, const std::string& path, const char* name) const {
    if ((seen & (1u << static_cast<unsigned>(slot))) == 0) {
      fail(source_, path, std::string("missing \"") + name + "\"");
    }
  }
  void push(Frame frame) {
    // Nesting is bounded by the input's size; a skipped subtree of any depth costs one frame per
    // level, as RapidJSON's own parse stack does.
    frames_.push_back(frame);
    member_ = Slot::kUnused;
  }
  void pop() {
    frames_.pop_back();
    member_ = Slot::kUnused;
  }

  std::string tagPath() const { return "$.values[" + std::to_string(tag_index_) + "]"; }
  std::string prefixPath() const {
    return tagPath() + ".properties.addressPrefixes[" + std::to_string(prefix_index_) + "]";
  }
  // The path of the innermost open object of the schema (for a duplicate member).
  std::string framePath() const {
    switch (frames_.back()) {
      case Frame::kTag:
        return tagPath();
      case Frame::kProperties:
        return tagPath() + ".properties";
      default:
        return "$";
    }
  }
  std::string slotPath(Slot slot) const {
    switch (slot) {
      case Slot::kRoot:
        return "$";
      case Slot::kChangeNumber:
        return "$.changeNumber";
      case Slot::kCloud:
        return "$.cloud";
      case Slot::kValues:
        return "$.values";
      case Slot::kTag:
        return tagPath();
      case Slot::kName:
        return tagPath() + ".name";
      case Slot::kProperties:
        return tagPath() + ".properties";
      case Slot::kRegion:
        return tagPath() + ".properties.region";
      case Slot::kAddressPrefixes:
        return tagPath() + ".properties.addressPrefixes";
      default:
        return prefixPath();
    }
  }

  const std::string& source_;
  ServiceTags::Contents& out_;
  std::vector<Frame> frames_;
  Slot member_ = Slot::kUnused;  // the member the last Key named, in the innermost object
  uint32_t top_seen_ = 0;        // bits by Slot: members of $ given so far
  uint32_t seen_ = 0;            // the same for the current tag and its properties
  ServiceTag tag_;
  size_t tag_index_ = 0;
  size_t prefix_index_ = 0;
};

}  // namespace

ServiceTags ServiceTags::parse(std::string_view json, const std::string& source) {
  if (json.empty()) {
    throw ConfigError(source + ": the service-tags file is empty");
  }
  ServiceTags tags;
  tags.source_ = source;
  ServiceTagsReader handler(source, tags.contents_);
  rapidjson::Reader reader;
  rapidjson::MemoryStream stream(json.data(), json.size());
  const rapidjson::ParseResult result =
      reader.Parse<rapidjson::kParseIterativeFlag>(stream, handler);
  if (result.IsError()) {
    throw ConfigError(source + ":" + lineAndColumn(json, result.Offset()) +
                      ": invalid JSON: " + rapidjson::GetParseError_En(result.Code()));
  }
  return tags;
}

const ServiceTag* ServiceTags::find(std::string_view name) const noexcept {
  const auto it = contents_.by_name.find(std::string(name));
  return it == contents_.by_name.end() ? nullptr : &contents_.tags[it->second];
}

std::vector<std::string> ServiceTags::suggest(std::string_view name, size_t limit) const {
  std::vector<std::pair<size_t, const std::string*>> scored;
  scored.reserve(contents_.tags.size());
  for (const ServiceTag& tag : contents_.tags) {
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
