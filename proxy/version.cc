#include "proxy/version.h"

namespace acr {

std::string_view version() noexcept { return ACR_EGRESS_VERSION; }

}  // namespace acr
