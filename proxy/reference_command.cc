#include "proxy/reference_command.h"

#include <string_view>

#include "conf/settings_table.h"
#include "proxy/close_reason.h"

namespace acr {
namespace {

struct Reference {
  std::string_view kind;
  void (*write)(std::ostream&);
};

// One row per generated table; scripts/update-docs knows the same kinds.
constexpr Reference kReferences[] = {
    {"settings", &writeSettingsReference},
    {"reasons", &writeCloseReasonReference},
};

}  // namespace

int runReferenceCommand(const std::vector<std::string>& args, std::ostream& out,
                        std::ostream& err) {
  if (args.size() == 1) {
    for (const Reference& reference : kReferences) {
      if (args[0] == reference.kind) {
        reference.write(out);
        return 0;
      }
    }
  }
  err << "usage: acr-egress reference KIND, KIND one of:";
  for (const Reference& reference : kReferences) {
    err << " " << reference.kind;
  }
  err << "\n";
  return 2;
}

}  // namespace acr
