#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace acr {

// A preset file as compiled into the binary (cmake/EmbedPresets.cmake): its name (the file name
// without ".preset") and its text.
struct EmbeddedPreset {
  std::string_view name;
  std::string_view text;
};
// Every file of conf/presets/, sorted by name. Defined in the generated embedded_presets.cc.
std::span<const EmbeddedPreset> embeddedPresets() noexcept;

// One host pattern a preset adds: `preset` is the preset whose file lists it (for "iotedge",
// whose file includes "mcr", mcr's names say "mcr"); `source` is the Microsoft document named in
// the line's comment.
struct PresetPattern {
  std::string pattern;
  std::string preset;
  std::string source;
};

// The named bundles of host rules (README "Presets"). A preset file holds one host pattern per
// line or "include NAME"; '#' starts a comment; blank lines are ignored. Patterns are validated
// where they become rules (conf/policy_factory), like every other pattern.
class PresetLibrary {
 public:
  // The embedded presets, parsed once. A malformed embedded file is a build defect: the first use
  // throws ConfigError naming "preset NAME:LINE" (a test parses every file).
  static const PresetLibrary& embedded();
  // Parses `presets`; throws ConfigError naming the preset and line of a bad line or an include
  // of an unknown preset.
  static PresetLibrary parse(std::span<const EmbeddedPreset> presets);

  // The patterns of preset `name`, includes expanded in place, each pattern once (the first
  // occurrence wins). std::nullopt if there is no such preset. An include cycle is cut.
  std::optional<std::vector<PresetPattern>> expand(std::string_view name) const;
  std::vector<std::string> names() const;

 private:
  struct Line {
    bool include = false;
    std::string text;  // the pattern or the included name
    std::string source;
  };
  struct Preset {
    std::string name;
    std::vector<Line> lines;
  };
  const Preset* find(std::string_view name) const;
  void expandInto(const Preset& preset, std::vector<const Preset*>& stack,
                  std::vector<PresetPattern>& out) const;

  std::vector<Preset> presets_;
};

}  // namespace acr
