#include "proxy/check_command.h"

#include <optional>
#include <ostream>

#include "conf/command_line.h"
#include "conf/policy_factory.h"
#include "conf/proxy_settings.h"
#include "filters/ip_address.h"
#include "filters/socket_address.h"
#include "proxy/socket_options.h"

namespace acr {
namespace {

struct CheckTarget {
  std::string host;  // brackets removed
  uint16_t port = kDefaultPort;
  // HOST@ADDRESS: the name dialled at this address (judged as a resolved address would be).
  std::optional<IpAddress> address;
};

// host | host:port | IPv4 | IPv4:port | [IPv6] | [IPv6]:port, a name optionally followed by
// @ADDRESS (IPv4 or IPv6, brackets optional): the name dialled at that address.
std::optional<CheckTarget> parseTarget(const std::string& text) {
  if (const size_t at = text.rfind('@'); at != std::string::npos) {
    auto target = parseTarget(text.substr(0, at));
    std::string_view address_text = std::string_view(text).substr(at + 1);
    if (address_text.size() > 2 && address_text.front() == '[' && address_text.back() == ']') {
      address_text = address_text.substr(1, address_text.size() - 2);
    }
    const auto address = IpAddress::parse(address_text);
    if (!target || !address || IpAddress::parse(target->host) || target->address) {
      return std::nullopt;
    }
    target->address = address;
    return target;
  }
  const std::optional<HostPort> parts = splitHostPort(text);
  if (!parts) {
    return std::nullopt;
  }
  CheckTarget target;
  target.host = std::string(parts->host);
  if (parts->bracketed) {
    const auto literal = IpAddress::parse(target.host);
    if (!literal || literal->isV4()) {
      return std::nullopt;
    }
  } else if (target.host.find(':') != std::string::npos) {
    return std::nullopt;  // a bare IPv6 literal must be bracketed
  }
  if (parts->has_port) {
    const auto port = parsePort(parts->port);
    if (!port) {
      return std::nullopt;
    }
    target.port = *port;
  }
  return target;
}

}  // namespace

int runCheckCommand(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  try {
    // --client ADDR (check only): judge the targets as a connection from ADDR would be judged.
    std::optional<IpAddress> client;
    std::vector<std::string> policy_args;
    for (size_t i = 0; i < args.size(); ++i) {
      std::optional<std::string> text;
      if (args[i] == "--client" && i + 1 < args.size()) {
        text = args[++i];
      } else if (args[i].starts_with("--client=")) {
        text = args[i].substr(9);
      } else if (args[i] == "--client") {
        throw ConfigError("--client: missing value");
      }
      if (!text) {
        policy_args.push_back(args[i]);
        continue;
      }
      client = IpAddress::parse(*text);
      if (!client) {
        throw ConfigError("--client: invalid address '" + *text +
                          "': expected an IPv4 or IPv6 address");
      }
    }
    const CommandLine command_line = parseCommandLine(policy_args);
    if (command_line.positional.empty()) {
      err << "usage: acr-egress check [--client ADDR] [policy options] TARGET...\n";
      writePolicyOptionsHelp(err);
      return 2;
    }
    std::vector<CheckTarget> targets;
    for (const std::string& text : command_line.positional) {
      const auto target = parseTarget(text);
      if (!target) {
        err << "acr-egress check: invalid target '" << text
            << "': expected host, host:port, IPv4[:port], [IPv6][:port] or host[:port]@ADDRESS\n";
        return 2;
      }
      targets.push_back(*target);
    }
    const PolicySnapshot snapshot = buildPolicy(command_line.config.policy);
    const Policy& top = *snapshot.policy;
    // With --client, the policy that client's connections get: its group's, if it has one.
    const Policy* chosen = &top;
    std::string group_note;
    bool all_allowed = true;
    for (size_t i = 0; i < targets.size(); ++i) {
      const CheckTarget& target = targets[i];
      if (client) {
        const Policy::ClientChoice choice = top.chooseClient(*client);
        if (!choice.decision.allowed()) {
          all_allowed = false;
          out << "deny " << command_line.positional[i] << " "
              << top.describe(choice.decision, {"", client, 0}) << " ["
              << reasonName(choice.decision.reason) << "]\n";
          continue;
        }
        chosen = choice.policy;
        if (choice.group != Policy::kNoGroup) {
          group_note = "; client " + client->toString() + " is in group " +
                       top.groups()[choice.group].name + " (client range " +
                       choice.decision.rule->text + ")";
        }
      }
      const Policy& policy = *chosen;
      Decision decision = policy.decide(target.host, target.port);
      DecisionSubject subject{target.host, IpAddress::parse(target.host), target.port};
      if (decision.allowed() && target.address) {
        // HOST@ADDRESS: the name passed; now the address it would be dialled at.
        decision = policy.decideDialled(target.host, *target.address);
        subject.address = target.address;
      }
      all_allowed = all_allowed && decision.allowed();
      out << (decision.allowed() ? "allow " : "deny ") << command_line.positional[i] << " "
          << policy.describe(decision, subject) << group_note << " [" << reasonName(decision.reason)
          << "]\n";
    }
    return all_allowed ? 0 : 1;
  } catch (const ConfigError& error) {
    err << "acr-egress: " << error.what() << "\n";
    return 2;
  }
}

int runCheckConfig(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  try {
    const CommandLine command_line = parseCommandLine(args, {"--check-config"});
    if (!command_line.positional.empty()) {
      err << "acr-egress --check-config: unexpected argument '" << command_line.positional[0]
          << "'\n";
      return 2;
    }
    // listeners, limits, --admin: refused here too
    const ProxySettings settings = buildProxySettings(command_line.config);
    checkListenerExposure(command_line.config);
    const PolicySnapshot snapshot = buildPolicy(command_line.config.policy);
    out << "configuration OK\n" << snapshot.summary();
    for (const ListenerSettings& listener : settings.listeners) {
      if (listener.kind == ListenerKind::kTransparent &&
          !canSetTransparent(listener.address.family())) {
        out << "warning: " << transparentWarning(listener.text) << "\n";
      }
    }
    for (const std::string& warning : snapshot.warnings) {
      out << "warning: " << warning << "\n";
    }
    return 0;
  } catch (const ConfigError& error) {
    err << "acr-egress: " << error.what() << "\n";
    return 2;
  }
}

}  // namespace acr
