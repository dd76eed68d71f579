#pragma once

#include <string>

namespace acr::test {

// Paths of the shared, real data (see ../shared/data/SOURCES.md).
inline std::string sharedPath(const std::string& relative) {
  return std::string(ACR_SHARED_DIR) + "/" + relative;
}
inline std::string serviceTagsPath() { return sharedPath("data/ServiceTags_Public.json"); }

}  // namespace acr::test
