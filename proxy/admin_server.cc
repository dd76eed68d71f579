#include "proxy/admin_server.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string_view>

namespace acr {
namespace {

constexpr const char* kPrometheusType = "text/plain; version=0.0.4; charset=utf-8";
constexpr const char* kTextType = "text/plain; charset=utf-8";
constexpr int kRequestTimeoutSeconds = 10;
constexpr size_t kMaxHeadersSize = 8192;
constexpr ev_uint16_t kEveryMethod = EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                     EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                     EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH;

void reply(evhttp_request* request, int status, const char* reason, const char* type,
           std::string_view body) {
  evkeyvalq* headers = evhttp_request_get_output_headers(request);
  evhttp_add_header(headers, "Content-Type", type);
  evhttp_add_header(headers, "Cache-Control", "no-store");
  evbuffer* buffer = evbuffer_new();
  if (buffer == nullptr) {
    evhttp_send_error(request, HTTP_INTERNAL, nullptr);
    return;
  }
  evbuffer_add(buffer, body.data(), body.size());
  evhttp_send_reply(request, status, reason, buffer);
  evbuffer_free(buffer);
}

void writeCidrs(rapidjson::Writer<rapidjson::StringBuffer>& writer, const char* key,
                const std::vector<const Rule*>& rules) {
  writer.Key(key);
  writer.StartArray();
  for (const Rule* rule : rules) {
    writer.StartObject();
    writer.Key("cidr");
    writer.String(rule->text.c_str(), static_cast<rapidjson::SizeType>(rule->text.size()));
    writer.Key("origin");
    writer.String(rule->origin.c_str(), static_cast<rapidjson::SizeType>(rule->origin.size()));
    writer.EndObject();
  }
  writer.EndArray();
}

}  // namespace

AdminServer::AdminServer(event_base* base, ProxyContext& context, const SocketAddress& address)
    : context_(context) {
  http_ = evhttp_new(base);
  if (http_ == nullptr) {
    throw std::runtime_error("cannot create the admin HTTP server");
  }
  evconnlistener* listener = evconnlistener_new_bind(
      base, nullptr, nullptr, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, -1,
      address.get(), static_cast<int>(address.length));
  if (listener == nullptr) {
    const int error = errno;
    evhttp_free(http_);
    throw std::runtime_error("cannot listen on admin address " + address.toString() + ": " +
                             std::strerror(error));
  }
  if (evhttp_bind_listener(http_, listener) == nullptr) {
    evconnlistener_free(listener);
    evhttp_free(http_);
    throw std::runtime_error("cannot serve HTTP on admin address " + address.toString());
  }
  // Every method reaches handle(), which answers 405 itself (evhttp would answer 501).
  evhttp_set_allowed_methods(http_, kEveryMethod);
  evhttp_set_timeout(http_, kRequestTimeoutSeconds);
  evhttp_set_max_headers_size(http_, kMaxHeadersSize);
  evhttp_set_max_body_size(http_, 0);
  evhttp_set_gencb(http_, &AdminServer::onRequest, this);
}

AdminServer::~AdminServer() {
  // Frees the bound listener (LEV_OPT_CLOSE_ON_FREE closes its socket) and open connections.
  evhttp_free(http_);
}

void AdminServer::onRequest(evhttp_request* request, void* self) {
  static_cast<AdminServer*>(self)->handle(request);
}

void AdminServer::handle(evhttp_request* request) {
  const evhttp_uri* uri = evhttp_request_get_evhttp_uri(request);
  const char* raw_path = uri != nullptr ? evhttp_uri_get_path(uri) : nullptr;
  const std::string_view path = raw_path != nullptr ? raw_path : "";
  const bool known =
      path == "/metrics" || path == "/healthz" || path == "/readyz" || path == "/policy";
  if (!known) {
    reply(request, HTTP_NOTFOUND, "Not Found", kTextType, "not found\n");
    return;
  }
  const evhttp_cmd_type method = evhttp_request_get_command(request);
  if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_HEAD) {
    evhttp_add_header(evhttp_request_get_output_headers(request), "Allow", "GET, HEAD");
    reply(request, HTTP_BADMETHOD, "Method Not Allowed", kTextType, "method not allowed\n");
    return;
  }
  if (path == "/healthz") {
    reply(request, HTTP_OK, "OK", kTextType, "ok\n");
  } else if (path == "/readyz") {
    if (context_.draining()) {
      reply(request, HTTP_SERVUNAVAIL, "Service Unavailable", kTextType, "draining\n");
    } else if (context_.snapshot() == nullptr) {
      reply(request, HTTP_SERVUNAVAIL, "Service Unavailable", kTextType, "no policy loaded\n");
    } else {
      const auto snapshot = context_.snapshot();
      reply(request, HTTP_OK, "OK", kTextType,
            snapshot->policy->reportOnly()
                ? "ready; REPORT-ONLY: enforcement is OFF (denials are logged as would_deny and "
                  "let through)\n"
                : "ready\n");
    }
  } else if (path == "/metrics") {
    std::string body;
    body.reserve(8192);
    context_.metrics().render(body, context_.stats(), std::chrono::system_clock::now());
    reply(request, HTTP_OK, "OK", kPrometheusType, body);
  } else {
    const auto snapshot = context_.snapshot();
    if (snapshot == nullptr) {
      reply(request, HTTP_SERVUNAVAIL, "Service Unavailable", kTextType, "no policy loaded\n");
      return;
    }
    reply(request, HTTP_OK, "OK", "application/json",
          policyJson(*snapshot, context_.metrics().policyGeneration(), context_.listenerWarnings(),
                     context_.needsRestart()) +
              "\n");
  }
}

std::string AdminServer::policyJson(const PolicySnapshot& snapshot, uint64_t generation,
                                    const std::vector<std::string>& warnings,
                                    const std::vector<std::string>& needs_restart) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
  auto string = [&writer](const std::string& text) {
    writer.String(text.c_str(), static_cast<rapidjson::SizeType>(text.size()));
  };
  std::vector<const Rule*> hosts;
  std::vector<const Rule*> allow_cidrs;
  std::vector<const Rule*> deny_cidrs;
  std::vector<const Rule*> bindings;
  const Policy& policy = *snapshot.policy;
  for (const Rule& rule : policy.rules()) {
    if (rule.kind == Rule::Kind::kHostPattern) {
      hosts.push_back(&rule);
    } else if (rule.kind == Rule::Kind::kAllowCidr) {
      allow_cidrs.push_back(&rule);
    } else if (rule.kind == Rule::Kind::kDenyCidr) {
      deny_cidrs.push_back(&rule);
    } else if (rule.kind == Rule::Kind::kHostBinding) {
      bindings.push_back(&rule);
    }
  }
  writer.StartObject();
  writer.Key("generation");
  writer.Uint64(generation);
  writer.Key("host_patterns");
  writer.StartArray();
  for (const Rule* rule : hosts) {
    writer.StartObject();
    writer.Key("pattern");
    string(rule->text);
    writer.Key("origin");
    string(rule->origin);
    if (!rule->preset.empty()) {
      writer.Key("preset");
      string(rule->preset);
    }
    writer.EndObject();
  }
  writer.EndArray();
  writer.Key("ports");
  writer.StartArray();
  for (const uint16_t port : policy.ports()) {
    writer.Uint(port);
  }
  writer.EndArray();
  writeCidrs(writer, "allow_cidrs", allow_cidrs);
  writer.Key("allow_cidr_count");
  writer.Uint64(allow_cidrs.size());
  writeCidrs(writer, "deny_cidrs", deny_cidrs);
  writer.Key("deny_cidr_count");
  writer.Uint64(deny_cidrs.size());
  writer.Key("allowed_prefix_count");
  writer.Uint64(policy.allowedPrefixCount());
  writer.Key("bindings");  // address binding: a matching name may be dialled only inside these
  writer.StartArray();
  for (const Rule* rule : bindings) {
    writer.StartObject();
    writer.Key("pattern");
    string(rule->text);
    writer.Key("bound_to");
    string(rule->bound_to);
    writer.Key("origin");
    string(rule->origin);
    writer.EndObject();
  }
  writer.EndArray();
  writer.Key("service_tags");
  writer.StartObject();
  writer.Key("file");
  if (snapshot.service_tags_path.empty()) {
    writer.Null();
  } else {
    string(snapshot.service_tags_path);
  }
  writer.Key("change_number");
  if (snapshot.service_tags_change_number) {
    writer.Int64(*snapshot.service_tags_change_number);
  } else {
    writer.Null();
  }
  writer.Key("tags");
  writer.StartArray();
  for (const std::string& name : snapshot.service_tag_names) {
    string(name);
  }
  writer.EndArray();
  writer.EndObject();
  writer.Key("strict_ip");
  writer.Bool(policy.strictIp());
  writer.Key("listener_warnings");
  writer.StartArray();
  for (const std::string& warning : warnings) {
    string(warning);
  }
  writer.EndArray();
  writer.Key("report_only");
  writer.Bool(policy.reportOnly());
  writer.Key("needs_restart");
  writer.StartArray();
  for (const std::string& key : needs_restart) {
    string(key);
  }
  writer.EndArray();
  if (!snapshot.is_group) {
    writer.Key("client_cidrs");  // --client-cidr, policy.client_cidrs (groups: below)
    writer.StartArray();
    for (const Rule& rule : policy.rules()) {
      if (rule.kind == Rule::Kind::kClientCidr && rule.group.empty()) {
        string(rule.text);
      }
    }
    writer.EndArray();
    // Client groups: each with its clients and its effective policy, in the shape of this one.
    writer.Key("groups");
    writer.StartArray();
    for (const PolicySnapshot::Group& group : snapshot.groups) {
      writer.StartObject();
      writer.Key("name");
      string(group.name);
      writer.Key("origin");
      string(group.origin);
      writer.Key("clients");
      writer.StartArray();
      for (const std::string& client : group.clients) {
        string(client);
      }
      writer.EndArray();
      writer.Key("policy");
      const std::string own = policyJson(*group.snapshot, generation, {}, {});
      writer.RawValue(own.c_str(), own.size(), rapidjson::kObjectType);
      writer.EndObject();
    }
    writer.EndArray();
  }
  writer.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize());
}

}  // namespace acr
