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
#include <optional>

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

// The schema as a SAX handler: RapidJSON's Reader calls it once per token, so the file is checked
// and turned into ServiceTag values in one pass, without a DOM (the DOM of the 4 MB file was
// ~15 MB of allocations and most of the loader's time and page faults). Each open object or
// array is a Frame saying what it is; a member's value is dispatched on the member the last Key
// named. Members the loader does not use are skipped whatever their shape. A JSON path is built
// only for an error message.
class ServiceTagsReader
    : public rapidjson::BaseReaderHandler<rapidjson::UTF8<>, ServiceTagsReader> {
 public:
  ServiceTagsReader(const std::string& source, ServiceTags::Contents& out,
                    const std::vector<std::string>* keep)
      : source_(source), out_(out), keep_(keep) {}

  bool StartObject() {
    switch (valueSlot()) {
      case Slot::kRoot:
        push(Frame::kTop);
        return true;
      case Slot::kTag:
        tag_ = ServiceTag{};
        seen_ = 0;
        keeping_ = Keeping::kUnknown;
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
        require(seen_, Slot::kName, "", "name");
        require(seen_, Slot::kProperties, "", "properties");
        if (keeping_ == Keeping::kUnknown) {
          keeping_ = kept(tag_.name) ? Keeping::kYes : Keeping::kNo;  // "name" came last
        }
        out_.names += tag_.name;
        if (out_.names.size() > UINT32_MAX - 1) {
          fail(source_, tagPath() + ".name", "too many tag names");
        }
        out_.name_ends.push_back(static_cast<uint32_t>(out_.names.size()));
        if (keeping_ == Keeping::kYes) {
          out_.kept.push_back(static_cast<uint32_t>(out_.tags.size()));
          out_.tags.push_back(std::move(tag_));
        } else {
          out_.kept.push_back(ServiceTags::Contents::kNone);
        }
        ++tag_index_;
        break;
      }
      case Frame::kProperties:
        require(seen_, Slot::kAddressPrefixes, ".properties", "addressPrefixes");
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
        keeping_ = kept(tag_.name) ? Keeping::kYes : Keeping::kNo;
        return true;
      case Slot::kRegion:
        tag_.region.assign(value);
        return true;
      case Slot::kPrefix: {
        if (keeping_ == Keeping::kNo) {
          ++prefix_index_;
          return true;
        }
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
  // Whether the current tag's prefixes are kept: known once its "name" has been read.
  enum class Keeping : uint8_t { kUnknown, kYes, kNo };
  bool kept(const std::string& name) const {
    return keep_ == nullptr || std::find(keep_->begin(), keep_->end(), name) != keep_->end();
  }

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
  // `where`: "$" for the top level, else the path under the current tag (built only on failure:
  // building it for every tag was 5 % of the load).
  void require(uint32_t seen, Slot slot, const char* where, const char* name) const {
    if ((seen & (1u << static_cast<unsigned>(slot))) == 0) {
      const std::string path = std::string_view(where) == "$" ? "$" : tagPath() + where;
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
  const std::vector<std::string>* keep_;
  Keeping keeping_ = Keeping::kUnknown;
  std::vector<Frame> frames_;
  Slot member_ = Slot::kUnused;  // the member the last Key named, in the innermost object
  uint32_t top_seen_ = 0;        // bits by Slot: members of $ given so far
  uint32_t seen_ = 0;            // the same for the current tag and its properties
  ServiceTag tag_;
  size_t tag_index_ = 0;
  size_t prefix_index_ = 0;
};

// The file read in 64 KiB blocks into one buffer reused for the whole file: reading Azure's 4 MB
// file into a buffer of its size first cost a page fault per 4 KiB of fresh memory, which on the
// 2-core VMs it runs on was 12 ms of the start-up (bench/e2e/PROFILE.md section 8). Each block is
// followed by a '\0', RapidJSON's end of input; a NUL byte in the file would look like that end,
// so reading stops there and says so.
class FileBlocks {
 public:
  static constexpr size_t kBlockSize = 64 * 1024;

  FileBlocks(int fd, const std::string& path) : fd_(fd), path_(path) {}

  struct Block {
    char* begin;
    char* end;
  };
  // The next block, empty at the end of the input. Returned by value: a stream passing its own
  // pointers by reference would let them escape and lose copyOptimization (see FileStream).
  Block next() {
    consumed_ += length_;
    length_ = 0;
    *buffer_.get() = '\0';
    if (at_end_) {
      return {buffer_.get(), buffer_.get()};
    }
    ssize_t n;
    do {
      n = ::read(fd_, buffer_.get(), kBlockSize);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      throw ConfigError(path_ + ": cannot read the service-tags file: " + std::strerror(errno));
    }
    if (consumed_ + static_cast<size_t>(n) > static_cast<size_t>(ServiceTags::kMaxFileSize)) {
      throw ConfigError(path_ + ": cannot read the service-tags file: larger than " +
                        std::to_string(ServiceTags::kMaxFileSize >> 20) + " MiB");
    }
    length_ = static_cast<size_t>(n);
    if (const void* nul = std::memchr(buffer_.get(), '\0', length_); nul != nullptr) {
      length_ = static_cast<size_t>(static_cast<const char*>(nul) - buffer_.get());
      nul_offset_ = consumed_ + length_;
    }
    at_end_ = n == 0 || nul_offset_.has_value();
    buffer_[length_] = '\0';
    return {buffer_.get(), buffer_.get() + length_};
  }
  bool atEnd() const { return at_end_; }
  // Offset in the file of `at`, a position in the current block.
  size_t offsetOf(const char* at) const {
    return consumed_ + static_cast<size_t>(at - buffer_.get());
  }
  // Where a NUL byte ended the input, if one did.
  std::optional<size_t> nulOffset() const { return nul_offset_; }

 private:
  int fd_;
  const std::string& path_;
  std::unique_ptr<char[]> buffer_ = std::make_unique_for_overwrite<char[]>(kBlockSize + 1);
  size_t consumed_ = 0;  // bytes before the current block
  size_t length_ = 0;    // bytes in the current block
  bool at_end_ = false;
  std::optional<size_t> nul_offset_;
};

// RapidJSON's input stream over FileBlocks: two pointers into the current block, cheap to copy, so
// that RapidJSON parses through a local copy held in registers (StreamTraits::copyOptimization,
// below, as for its own StringStream). Through a reference, every character a string copies is a
// char store that may alias the stream, so each step reloaded the stream's pointers: strings cost
// ~26 instructions a character.
class FileStream {
 public:
  using Ch = char;

  explicit FileStream(FileBlocks& blocks) : blocks_(&blocks) { nextBlock(); }

  Ch Peek() const { return *current_; }
  Ch Take() {
    const Ch c = *current_;
    if (++current_ == end_) {
      nextBlock();
    }
    return c;
  }
  size_t Tell() const { return blocks_->offsetOf(current_); }
  // RapidJSON's SkipWhitespace over the block rather than through Peek() and Take(): a third of
  // Azure's file is indentation.
  void skipWhitespace() {
    while (true) {
      char* p = current_;
      while (p != end_ && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) {
        ++p;
      }
      current_ = p;
      if (p != end_ || blocks_->atEnd()) {
        return;
      }
      nextBlock();
    }
  }
  // Only for in-situ parsing, which this stream does not support.
  Ch* PutBegin() { return nullptr; }
  void Put(Ch) {}
  void Flush() {}
  size_t PutEnd(Ch*) { return 0; }

 private:
  void nextBlock() {
    const FileBlocks::Block block = blocks_->next();
    current_ = block.begin;
    end_ = block.end;
  }

  FileBlocks* blocks_;
  char* current_ = nullptr;
  char* end_ = nullptr;
};

}  // namespace
}  // namespace acr

// The extension points RapidJSON offers a stream (it specializes both for its own streams).
template <>
struct rapidjson::StreamTraits<acr::FileStream> {
  enum { copyOptimization = 1 };
};
template <>
inline void rapidjson::SkipWhitespace(acr::FileStream& stream) {
  stream.skipWhitespace();
}

namespace acr {
namespace {

// Line and column of byte `offset` of the file, by lineAndColumn over the text up to it (an error
// path: the text is read again).
std::string lineAndColumnInFile(int fd, size_t offset) {
  std::string text(offset, '\0');
  size_t done = 0;
  while (done < offset) {
    const ssize_t n = ::pread(fd, text.data() + done, offset - done, static_cast<off_t>(done));
    if (n <= 0) {
      break;
    }
    done += static_cast<size_t>(n);
  }
  return lineAndColumn(std::string_view(text).substr(0, done), offset);
}

template <class Stream>
rapidjson::ParseResult parseStream(Stream& stream, const std::string& source,
                                   ServiceTags::Contents& out,
                                   const std::vector<std::string>* keep) {
  ServiceTagsReader handler(source, out, keep);
  rapidjson::Reader reader;
  return reader.Parse<rapidjson::kParseIterativeFlag>(stream, handler);
}

}  // namespace

ServiceTags ServiceTags::load(const std::string& path, const std::vector<std::string>* keep) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw ConfigError(path + ": cannot open the service-tags file: " + std::strerror(errno));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat info {};
  std::string error;
  if (::fstat(fd, &info) != 0) {
    error = std::strerror(errno);
  } else if (!S_ISREG(info.st_mode)) {
    error = "not a regular file";
  } else if (info.st_size > kMaxFileSize) {
    error = "larger than " + std::to_string(kMaxFileSize >> 20) + " MiB";
  }
  if (!error.empty()) {
    throw ConfigError(path + ": cannot read the service-tags file: " + error);
  }
  FileBlocks blocks(fd, path);
  FileStream stream(blocks);
  if (stream.Peek() == '\0' && !blocks.nulOffset()) {
    throw ConfigError(path + ": the service-tags file is empty");
  }
  ServiceTags tags;
  tags.source_ = path;
  const rapidjson::ParseResult result = parseStream(stream, path, tags.contents_, keep);
  if (const auto nul = blocks.nulOffset()) {
    throw ConfigError(path + ":" + lineAndColumnInFile(fd, *nul) + ": invalid JSON: a NUL byte");
  }
  if (result.IsError()) {
    throw ConfigError(path + ":" + lineAndColumnInFile(fd, result.Offset()) +
                      ": invalid JSON: " + rapidjson::GetParseError_En(result.Code()));
  }
  tags.indexNames();
  return tags;
}

ServiceTags ServiceTags::parse(std::string_view json, const std::string& source,
                               const std::vector<std::string>* keep) {
  if (json.empty()) {
    throw ConfigError(source + ": the service-tags file is empty");
  }
  ServiceTags tags;
  tags.source_ = source;
  rapidjson::MemoryStream stream(json.data(), json.size());
  const rapidjson::ParseResult result = parseStream(stream, source, tags.contents_, keep);
  if (result.IsError()) {
    throw ConfigError(source + ":" + lineAndColumn(json, result.Offset()) +
                      ": invalid JSON: " + rapidjson::GetParseError_En(result.Code()));
  }
  tags.indexNames();
  return tags;
}

void ServiceTags::indexNames() {
  Contents& c = contents_;
  c.by_name.resize(c.name_ends.size());
  for (uint32_t i = 0; i < c.by_name.size(); ++i) {
    c.by_name[i] = i;
  }
  std::sort(c.by_name.begin(), c.by_name.end(), [&c](uint32_t a, uint32_t b) {
    const int order = c.name(a).compare(c.name(b));
    return order != 0 ? order < 0 : a < b;
  });
  // The first tag, in the file's order, whose name an earlier tag already has.
  uint32_t duplicate = Contents::kNone;
  for (size_t i = 1; i < c.by_name.size(); ++i) {
    if (c.name(c.by_name[i]) == c.name(c.by_name[i - 1])) {
      duplicate = std::min(duplicate, c.by_name[i]);
    }
  }
  if (duplicate != Contents::kNone) {
    throw ConfigError(source_ + ": $.values[" + std::to_string(duplicate) +
                      "].name: duplicate tag name '" + std::string(c.name(duplicate)) + "'");
  }
}

uint32_t ServiceTags::Contents::indexOf(std::string_view wanted) const noexcept {
  const auto it = std::lower_bound(by_name.begin(), by_name.end(), wanted,
                                   [this](uint32_t i, std::string_view n) { return name(i) < n; });
  return it != by_name.end() && name(*it) == wanted ? *it : kNone;
}

const ServiceTag* ServiceTags::find(std::string_view name) const noexcept {
  const uint32_t index = contents_.indexOf(name);
  if (index == Contents::kNone || contents_.kept[index] == Contents::kNone) {
    return nullptr;
  }
  return &contents_.tags[contents_.kept[index]];
}

bool ServiceTags::known(std::string_view name) const noexcept {
  return contents_.indexOf(name) != Contents::kNone;
}

std::vector<std::string> ServiceTags::suggest(std::string_view name, size_t limit) const {
  std::vector<std::pair<size_t, std::string_view>> scored;
  scored.reserve(tagCount());
  for (uint32_t i = 0; i < tagCount(); ++i) {
    scored.emplace_back(editDistance(name, contents_.name(i)), contents_.name(i));
  }
  const size_t count = std::min(limit, scored.size());
  std::partial_sort(scored.begin(), scored.begin() + static_cast<std::ptrdiff_t>(count),
                    scored.end(), [](const auto& a, const auto& b) {
                      return a.first != b.first ? a.first < b.first : a.second < b.second;
                    });
  std::vector<std::string> names;
  for (size_t i = 0; i < count; ++i) {
    names.emplace_back(scored[i].second);
  }
  return names;
}

}  // namespace acr
