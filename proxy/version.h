#pragma once

#include <string_view>

namespace acr {

// The release version, from the CMake project version.
std::string_view version() noexcept;

}  // namespace acr
