#include "conf/presets.h"

#include <algorithm>

#include "conf/config.h"

namespace acr {
namespace {

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t' || text.front() == '\r')) {
    text.remove_prefix(1);
  }
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r')) {
    text.remove_suffix(1);
  }
  return text;
}

}  // namespace

const PresetLibrary& PresetLibrary::embedded() {
  static const PresetLibrary library = parse(embeddedPresets());
  return library;
}

PresetLibrary PresetLibrary::parse(std::span<const EmbeddedPreset> presets) {
  PresetLibrary library;
  for (const EmbeddedPreset& embedded : presets) {
    Preset preset;
    preset.name = std::string(embedded.name);
    std::string_view rest = embedded.text;
    size_t line_number = 0;
    while (!rest.empty()) {
      ++line_number;
      const size_t end = rest.find('\n');
      std::string_view line = rest.substr(0, end);
      rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 1);
      std::string_view comment;
      if (const size_t hash = line.find('#'); hash != std::string_view::npos) {
        comment = trim(line.substr(hash + 1));
        line = line.substr(0, hash);
      }
      line = trim(line);
      if (line.empty()) {
        continue;
      }
      const std::string where = "preset " + preset.name + ":" + std::to_string(line_number) + ": ";
      Line parsed;
      parsed.source = std::string(comment);
      if (line.substr(0, 8) == "include ") {
        parsed.include = true;
        parsed.text = std::string(trim(line.substr(8)));
      } else {
        parsed.text = std::string(line);
      }
      if (parsed.text.find_first_of(" \t") != std::string::npos || parsed.text.empty()) {
        throw ConfigError(where + "expected one host pattern or 'include NAME', got '" +
                          std::string(line) + "'");
      }
      preset.lines.push_back(std::move(parsed));
    }
    library.presets_.push_back(std::move(preset));
  }
  for (const Preset& preset : library.presets_) {
    for (const Line& line : preset.lines) {
      if (line.include && library.find(line.text) == nullptr) {
        throw ConfigError("preset " + preset.name + ": includes unknown preset '" + line.text +
                          "'");
      }
    }
  }
  return library;
}

const PresetLibrary::Preset* PresetLibrary::find(std::string_view name) const {
  for (const Preset& preset : presets_) {
    if (preset.name == name) {
      return &preset;
    }
  }
  return nullptr;
}

void PresetLibrary::expandInto(const Preset& preset, std::vector<const Preset*>& stack,
                               std::vector<PresetPattern>& out) const {
  if (std::find(stack.begin(), stack.end(), &preset) != stack.end()) {
    return;
  }
  stack.push_back(&preset);
  for (const Line& line : preset.lines) {
    if (line.include) {
      expandInto(*find(line.text), stack, out);
      continue;
    }
    const bool seen = std::any_of(out.begin(), out.end(), [&](const PresetPattern& pattern) {
      return pattern.pattern == line.text;
    });
    if (!seen) {
      out.push_back({line.text, preset.name, line.source});
    }
  }
  stack.pop_back();
}

std::optional<std::vector<PresetPattern>> PresetLibrary::expand(std::string_view name) const {
  const Preset* preset = find(name);
  if (preset == nullptr) {
    return std::nullopt;
  }
  std::vector<PresetPattern> patterns;
  std::vector<const Preset*> stack;
  expandInto(*preset, stack, patterns);
  return patterns;
}

std::vector<std::string> PresetLibrary::names() const {
  std::vector<std::string> names;
  for (const Preset& preset : presets_) {
    names.push_back(preset.name);
  }
  return names;
}

}  // namespace acr
