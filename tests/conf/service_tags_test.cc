#include "conf/service_tags.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "conf/config.h"
#include "test_data.h"

namespace acr {
namespace {

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string errorOf(std::string_view json) {
  try {
    ServiceTags::parse(json, "tags.json");
  } catch (const ConfigError& error) {
    return error.what();
  }
  return "";
}

// The real Azure file loads whole: every tag, every prefix, the change number.
TEST(ServiceTagsTest, LoadsTheRealFile) {
  const ServiceTags tags = ServiceTags::load(test::serviceTagsPath());
  EXPECT_EQ(tags.changeNumber(), 376);
  EXPECT_EQ(tags.cloud(), "Public");
  EXPECT_EQ(tags.tags().size(), 3041u);
  size_t v4 = 0;
  size_t v6 = 0;
  for (const ServiceTag& tag : tags.tags()) {
    for (const Cidr& prefix : tag.prefixes) {
      (prefix.address.isV4() ? v4 : v6) += 1;
    }
  }
  EXPECT_EQ(v4, 71348u);  // counts from ../shared/data/SOURCES.md
  EXPECT_EQ(v6, 24475u);
  const ServiceTag* acr = tags.find("AzureContainerRegistry");
  ASSERT_NE(acr, nullptr);
  EXPECT_EQ(acr->prefixes.size(), 590u + 556u);
  ASSERT_NE(tags.find("Storage.WestEurope"), nullptr);
  EXPECT_EQ(tags.find("Storage.WestEurope")->region, "westeurope");
}

// load() streams the file in 64 KiB blocks: the result is the same as parsing the whole text at
// once (the real file has tokens across every block boundary).
TEST(ServiceTagsTest, StreamedLoadEqualsWholeTextParse) {
  const ServiceTags streamed = ServiceTags::load(test::serviceTagsPath());
  const ServiceTags whole = ServiceTags::parse(readFile(test::serviceTagsPath()), "whole");
  ASSERT_EQ(streamed.tags().size(), whole.tags().size());
  for (size_t i = 0; i < whole.tags().size(); ++i) {
    const ServiceTag& a = streamed.tags()[i];
    const ServiceTag& b = whole.tags()[i];
    ASSERT_EQ(a.name, b.name);
    ASSERT_EQ(a.region, b.region) << a.name;
    ASSERT_EQ(a.prefixes, b.prefixes) << a.name;
  }
  EXPECT_EQ(streamed.changeNumber(), whole.changeNumber());
}

// With a selection, only the selected tags are kept, with every prefix; every other tag is still
// known by name (suggestions, and an error that is not "unknown tag" for a policy bug).
TEST(ServiceTagsTest, KeepsOnlySelectedTags) {
  const ServiceTags all = ServiceTags::load(test::serviceTagsPath());
  const std::vector<std::string> keep = {"Storage", "AzureContainerRegistry"};
  const ServiceTags some = ServiceTags::load(test::serviceTagsPath(), &keep);
  EXPECT_EQ(some.tagCount(), 3041u);
  EXPECT_EQ(all.tagCount(), 3041u);
  ASSERT_EQ(some.tags().size(), 2u);
  EXPECT_EQ(some.tags()[0].name, "AzureContainerRegistry");  // the file's order
  for (const std::string& name : keep) {
    ASSERT_NE(some.find(name), nullptr) << name;
    EXPECT_EQ(some.find(name)->prefixes, all.find(name)->prefixes) << name;
    EXPECT_EQ(some.find(name)->region, all.find(name)->region) << name;
  }
  EXPECT_EQ(some.find("Storage.WestEurope"), nullptr);
  EXPECT_TRUE(some.known("Storage.WestEurope"));
  EXPECT_FALSE(some.known("storage"));
  EXPECT_EQ(some.suggest("storage").front(), "Storage");
  EXPECT_EQ(some.suggest("Storage.eastus").front(), "Storage.EastUS");
  // A bad prefix: refused in a kept tag and whenever everything is kept; in a tag not kept whose
  // name comes first (as in Azure's files) it is only checked to be a string; when the name
  // comes after the prefixes, they were parsed strictly before that was known.
  const std::string bad_unkept =
      R"({"changeNumber":1,"values":[{"name":"Other","properties":{"addressPrefixes":["1.2.3/8"]}},)"
      R"({"name":"Storage","properties":{"addressPrefixes":["192.0.2.0/24"]}}]})";
  EXPECT_NE(errorOf(bad_unkept).find("$.values[0].properties.addressPrefixes[0]: invalid CIDR"),
            std::string::npos);
  const ServiceTags selected = ServiceTags::parse(bad_unkept, "tags.json", &keep);
  EXPECT_EQ(selected.find("Storage")->prefixes.size(), 1u);
  EXPECT_EQ(selected.find("Other"), nullptr);
  EXPECT_TRUE(selected.known("Other"));
  const std::vector<std::string> keep_other = {"Other"};
  EXPECT_THROW(ServiceTags::parse(bad_unkept, "tags.json", &keep_other), ConfigError);
  EXPECT_THROW(ServiceTags::parse(R"({"changeNumber":1,"values":[{"properties":)"
                                  R"({"addressPrefixes":["1.2.3/8"]},"name":"Other"}]})",
                                  "tags.json", &keep),
               ConfigError);
  // A prefix that is not a string is a schema error in any tag.
  EXPECT_THROW(ServiceTags::parse(R"({"changeNumber":1,"values":[{"name":"Other","properties":)"
                                  R"({"addressPrefixes":[5]}}]})",
                                  "tags.json", &keep),
               ConfigError);
}

// Errors from a file name its line and column (found by reading the file again), and a NUL byte,
// which would look like the end of the input to the parser, is refused where it is.
TEST(ServiceTagsTest, FileErrorsNameLineAndColumn) {
  const std::string dir = ::testing::TempDir() + "acr-service-tags-test";
  ASSERT_EQ(::mkdir(dir.c_str(), 0700) == 0 || errno == EEXIST, true);
  const std::string path = dir + "/tags.json";
  auto errorOfFile = [&path](const std::string& text) {
    std::ofstream(path, std::ios::binary) << text;
    try {
      ServiceTags::load(path);
    } catch (const ConfigError& error) {
      return std::string(error.what());
    }
    return std::string();
  };
  // A syntax error past the first 64 KiB block, on line 4.
  const std::string padding(100000, ' ');
  EXPECT_EQ(errorOfFile("{\n\"changeNumber\": 1,\n" + padding + "\n\"values\": [}"),
            path + ":4:12: invalid JSON: Invalid value.");
  EXPECT_EQ(errorOfFile(std::string("{\"changeNumber\":1,\n\"values\":[]}\0 trailing", 38)),
            path + ":2:13: invalid JSON: a NUL byte");
  EXPECT_EQ(errorOfFile(""), path + ": the service-tags file is empty");
  EXPECT_EQ(errorOfFile("{\"changeNumber\":1,\"values\":[]}"), "");
  ::unlink(path.c_str());
  ::rmdir(dir.c_str());
}

// Names match exactly: "storage" and "Storage*" are not "Storage"; suggestions help.
TEST(ServiceTagsTest, NamesMatchExactlyWithSuggestions) {
  const ServiceTags tags = ServiceTags::load(test::serviceTagsPath());
  EXPECT_EQ(tags.find("storage"), nullptr);
  EXPECT_EQ(tags.find("Storage.eastus"), nullptr);
  ASSERT_NE(tags.find("StorageSyncService"), nullptr);
  EXPECT_NE(tags.find("StorageSyncService"), tags.find("Storage"));
  EXPECT_EQ(tags.suggest("storage").front(), "Storage");
  EXPECT_EQ(tags.suggest("Storage.eastus").front(), "Storage.EastUS");
  EXPECT_EQ(tags.suggest("AzureContainerRegistery").front(), "AzureContainerRegistry");
}

// Bad files are refused whole, naming the JSON path or the line and column.
TEST(ServiceTagsTest, RefusesBadFilesWithLocation) {
  struct Case {
    const char* label;
    std::string json;
    const char* expected;
  };
  const std::string real = readFile(test::serviceTagsPath());
  const Case cases[] = {
      {"empty", "", "tags.json: the service-tags file is empty"},
      {"truncated", real.substr(0, real.size() / 2), "invalid JSON"},
      {"syntax_line", "{\n  \"changeNumber\": 1,\n  \"values\": [,]\n}", "tags.json:3:"},
      {"trailing_garbage", "{\"changeNumber\":1,\"values\":[]} x", "invalid JSON"},
      {"not_object", "[]", "$: the top level must be an object"},
      {"no_change_number", "{\"values\":[]}", "$: missing \"changeNumber\""},
      {"negative_change", "{\"changeNumber\":-1,\"values\":[]}", "$.changeNumber"},
      {"values_not_array", "{\"changeNumber\":1,\"values\":{}}", "$.values: must be an array"},
      {"no_name", "{\"changeNumber\":1,\"values\":[{\"properties\":{\"addressPrefixes\":[]}}]}",
       "$.values[0]: missing \"name\""},
      {"no_prefixes", "{\"changeNumber\":1,\"values\":[{\"name\":\"A\",\"properties\":{}}]}",
       "$.values[0].properties: missing \"addressPrefixes\""},
      {"bad_prefix",
       "{\"changeNumber\":1,\"values\":[{\"name\":\"A\",\"properties\":{\"addressPrefixes\":"
       "[\"1.0.0.0/8\",\"20.0.0.0/33\"]}}]}",
       "$.values[0].properties.addressPrefixes[1]: invalid CIDR '20.0.0.0/33': prefix length 33 "
       "is over 32"},
      {"host_bits",
       "{\"changeNumber\":1,\"values\":[{\"name\":\"A\",\"properties\":{\"addressPrefixes\":"
       "[\"10.0.0.5/8\"]}}]}",
       "host bits are set"},
      {"prefix_number",
       "{\"changeNumber\":1,\"values\":[{\"name\":\"A\",\"properties\":{\"addressPrefixes\":[5]}}]"
       "}",
       "addressPrefixes[0]: must be a string"},
      {"duplicate_tag",
       "{\"changeNumber\":1,\"values\":[{\"name\":\"A\",\"properties\":{\"addressPrefixes\":[]}},"
       "{\"name\":\"A\",\"properties\":{\"addressPrefixes\":[]}}]}",
       "$.values[1].name: duplicate tag name 'A'"},
      // A member the loader uses, given twice: which one would count is ambiguous.
      {"duplicate_member",
       "{\"changeNumber\":1,\"values\":[{\"name\":\"A\",\"name\":\"B\",\"properties\":"
       "{\"addressPrefixes\":[]}}]}",
       "$.values[0]: duplicate member \"name\""},
      {"duplicate_prefixes",
       "{\"changeNumber\":1,\"values\":[{\"name\":\"A\",\"properties\":{\"addressPrefixes\":"
       "[],\"addressPrefixes\":[\"10.0.0.0/8\"]}}]}",
       "$.values[0].properties: duplicate member \"addressPrefixes\""},
      {"duplicate_values", "{\"changeNumber\":1,\"values\":[],\"values\":[]}",
       "$: duplicate member \"values\""},
      {"scalar_top", "5", "$: the top level must be an object"},
      {"tag_not_object", "{\"changeNumber\":1,\"values\":[7]}", "$.values[0]: must be an object"},
      {"empty_name",
       "{\"changeNumber\":1,\"values\":[{\"name\":\"\",\"properties\":{\"addressPrefixes\":[]}}]}",
       "$.values[0].name: must be a non-empty string"},
      {"region_number",
       "{\"changeNumber\":1,\"values\":[{\"name\":\"A\",\"properties\":{\"region\":1,"
       "\"addressPrefixes\":[]}}]}",
       "$.values[0].properties.region: must be a string"},
      {"fraction_change", "{\"changeNumber\":1.5,\"values\":[]}",
       "$.changeNumber: must be a non-negative integer"},
      {"huge_change", "{\"changeNumber\":18446744073709551615,\"values\":[]}",
       "$.changeNumber: must be a non-negative integer"},
      {"no_values", "{\"changeNumber\":1}", "$: missing \"values\""},
      {"no_properties", "{\"changeNumber\":1,\"values\":[{\"name\":\"A\"}]}",
       "$.values[0]: missing \"properties\""},
      // Nesting deeper than any stack could recurse: a clean error, not a crash (the reader
      // parses iteratively).
      {"deep_unclosed", "{\"changeNumber\":1,\"x\":" + std::string(1 << 20, '['), "invalid JSON"},
  };
  for (const Case& c : cases) {
    const std::string error = errorOf(c.json);
    EXPECT_NE(error.find(c.expected), std::string::npos) << c.label << ": " << error;
  }
  EXPECT_THROW(ServiceTags::load("/nonexistent/tags.json"), ConfigError);
  try {
    ServiceTags::load("/");
    ADD_FAILURE() << "a directory loaded";
  } catch (const ConfigError& error) {
    EXPECT_NE(
        std::string(error.what()).find("/: cannot read the service-tags file: not a regular file"),
        std::string::npos)
        << error.what();
  }
}

// Members in any order, members the loader does not use skipped whatever their shape (however
// deep), and what it uses kept exactly.
TEST(ServiceTagsTest, ReadsMembersInAnyOrderAndSkipsTheRest) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  const ServiceTags tags = ServiceTags::parse(
      "{\"values\":[{\"properties\":{\"addressPrefixes\":[\"192.0.2.0/24\",\"2001:db8::/32\"],"
      "\"networkFeatures\":[\"API\",{\"a\":[null,true,1.5]}],\"region\":\"westeurope\","
      "\"systemService\":\"AzureContainerRegistry\"},\"id\":\"X\",\"name\":\"A.WestEurope\"},"
      "{\"name\":\"B\",\"properties\":{\"addressPrefixes\":[]},\"extra\":" +
          deep + "}],\"cloud\":\"Public\",\"other\":{\"values\":5},\"changeNumber\":42}",
      "tags.json");
  EXPECT_EQ(tags.changeNumber(), 42);
  EXPECT_EQ(tags.cloud(), "Public");
  ASSERT_EQ(tags.tags().size(), 2u);
  const ServiceTag* a = tags.find("A.WestEurope");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->region, "westeurope");
  ASSERT_EQ(a->prefixes.size(), 2u);
  EXPECT_EQ(a->prefixes[0].toString(), "192.0.2.0/24");
  EXPECT_EQ(a->prefixes[1].toString(), "2001:db8::/32");
  ASSERT_NE(tags.find("B"), nullptr);
  EXPECT_TRUE(tags.find("B")->prefixes.empty());
  EXPECT_EQ(tags.find("B")->region, "");
}

}  // namespace
}  // namespace acr
