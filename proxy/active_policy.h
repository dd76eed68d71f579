#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "filters/policy.h"

namespace acr {

// The policy in force, and for each of its client groups (Policy::groups(), same index) the
// group's series in Metrics. Immutable; ProxyContext swaps a whole new one on reload, so that a
// connection reads the policy and the series of one snapshot, never of two.
struct ActivePolicy {
  std::shared_ptr<const Policy> policy;
  std::vector<uint32_t> group_series;

  // The policy that judges the connections of `choice` (from policy->chooseClient): the group's,
  // sharing ownership of the whole snapshot, which also keeps the group's name alive.
  std::shared_ptr<const Policy> judging(const Policy::ClientChoice& choice) const {
    return std::shared_ptr<const Policy>(policy, choice.policy);
  }
  // The Metrics series of group `group` (UINT32_MAX, Metrics::kNoGroupSeries, for kNoGroup).
  uint32_t seriesOf(uint32_t group) const noexcept {
    return group < group_series.size() ? group_series[group] : UINT32_MAX;
  }
};

}  // namespace acr
