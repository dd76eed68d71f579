#include "conf/presets.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <iterator>

#include "conf/config.h"
#include "conf/policy_factory.h"

namespace acr {
namespace {

std::vector<std::string> patternsOf(const std::vector<PresetPattern>& patterns) {
  std::vector<std::string> out;
  for (const PresetPattern& pattern : patterns) {
    out.push_back(pattern.pattern);
  }
  return out;
}

std::string errorOf(std::span<const EmbeddedPreset> presets) {
  try {
    PresetLibrary::parse(presets);
  } catch (const ConfigError& error) {
    return error.what();
  }
  return "";
}

// The four documented presets are compiled in, every one parses, and every name it lists says
// which Microsoft document it comes from.
TEST(PresetsTest, EmbeddedPresetsParseAndCiteTheirSource) {
  const PresetLibrary& library = PresetLibrary::embedded();
  EXPECT_EQ(library.names(), (std::vector<std::string>{"acr", "azure-login", "iotedge", "mcr"}));
  for (const std::string& name : library.names()) {
    const auto patterns = library.expand(name);
    ASSERT_TRUE(patterns) << name;
    EXPECT_FALSE(patterns->empty()) << name;
    for (const PresetPattern& pattern : *patterns) {
      EXPECT_TRUE(pattern.source.starts_with("https://learn.microsoft.com/") ||
                  pattern.source.starts_with("https://github.com/microsoft/"))
          << name << ": " << pattern.pattern << " cites '" << pattern.source << "'";
    }
  }
}

// Each preset holds exactly the names the README documents; iotedge pulls in mcr's names, which
// still say they come from mcr.
TEST(PresetsTest, PresetsHoldTheDocumentedNames) {
  const PresetLibrary& library = PresetLibrary::embedded();
  EXPECT_EQ(patternsOf(*library.expand("mcr")),
            (std::vector<std::string>{"mcr.microsoft.com", "*.data.mcr.microsoft.com"}));
  EXPECT_EQ(patternsOf(*library.expand("azure-login")),
            (std::vector<std::string>{"login.microsoftonline.com", "management.azure.com"}));
  const auto iotedge = *library.expand("iotedge");
  EXPECT_EQ(patternsOf(iotedge), (std::vector<std::string>{
                                     "*.azure-devices.net", "global.azure-devices-provisioning.net",
                                     "mcr.microsoft.com", "*.data.mcr.microsoft.com"}));
  EXPECT_EQ(iotedge[0].preset, "iotedge");
  EXPECT_EQ(iotedge[2].preset, "mcr");
  EXPECT_FALSE(library.expand("docker-hub"));
}

// The acr preset and the embedded default are the same list, so that `--preset acr` means what
// running without host options means.
TEST(PresetsTest, AcrPresetIsTheEmbeddedDefault) {
  std::vector<std::string> defaults(std::begin(kDefaultHostPatterns),
                                    std::end(kDefaultHostPatterns));
  EXPECT_EQ(patternsOf(*PresetLibrary::embedded().expand("acr")), defaults);
}

// Comments, blank lines and includes; duplicates once; an include cycle ends; bad lines and
// unknown includes are refused naming the preset and line.
TEST(PresetsTest, ParsesTheFileFormat) {
  const std::array<EmbeddedPreset, 3> presets = {{
      {"a", "# header\n\nx.example.com  # doc-x\ninclude b\n  y.example.com\t# doc-y\r\n"},
      {"b", "include a\nz.example.com\nx.example.com\n"},
      {"c", "z.example.com"},
  }};
  const PresetLibrary library = PresetLibrary::parse(presets);
  const auto a = *library.expand("a");
  EXPECT_EQ(patternsOf(a),
            (std::vector<std::string>{"x.example.com", "z.example.com", "y.example.com"}));
  EXPECT_EQ(a[0].source, "doc-x");
  EXPECT_EQ(a[1].preset, "b");
  EXPECT_EQ(a[2].source, "doc-y");
  EXPECT_EQ(patternsOf(*library.expand("c")), std::vector<std::string>{"z.example.com"});

  const std::array<EmbeddedPreset, 1> two_words = {{{"bad", "ok.example.com\nnot one\n"}}};
  EXPECT_EQ(errorOf(two_words),
            "preset bad:2: expected one host pattern or 'include NAME', got 'not one'");
  const std::array<EmbeddedPreset, 1> unknown = {{{"bad", "include nothere\n"}}};
  EXPECT_EQ(errorOf(unknown), "preset bad: includes unknown preset 'nothere'");
}

}  // namespace
}  // namespace acr
