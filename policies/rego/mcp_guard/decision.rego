# mcp-guard default policy: the decision document.
#
# The proxy evaluates data.mcp_guard.decision for every request that touches an upstream, and once
# per item for listings, and expects {"allow": bool, "reasons": [string], "obligations": object}.
# Anything else is a fail-closed deny. Configuration (roles, allowlists, blocked tools) lives in
# data.json under "mcp_guard_config"; see policies/README.md.
#
# Composition: a request is allowed iff some role of the principal grants the target (grants.rego)
# AND no deny rule fires (denies.rego, arguments.rego). An explicit deny always wins; nothing is
# allowed by default.
package mcp_guard

import rego.v1

default allow := false

allow if {
	granted
	count(deny) == 0
}

decision := {"allow": true, "reasons": allow_reasons, "obligations": obligations} if allow

else := {"allow": false, "reasons": deny_reasons, "obligations": {}}

# Every explicit deny, sorted so that the order is stable across engines; else why nothing granted.
deny_reasons := sort(deny) if count(deny) > 0

else := [not_granted_reason]

allow_reasons := [sprintf("role '%s' allows %s", [concat("', '", sort(granting_roles)), target])]

not_granted_reason := sprintf("no role of principal '%s' allows %s", [principal_id, target]) if {
	count(principal_roles) > 0
} else := sprintf("principal '%s' has no roles, so it may not use %s", [principal_id, target])

# Obligations the proxy must honour on an allowed request:
#   secrets: the names of the configured secrets the call may use (union over matching grants).
#   rate_limit: the limits that apply to the call (limits.rego), when any does.
#   labels: what the call adds to its information flow (flows.rego), when it adds anything.
obligations := object.union(object.union({"secrets": sort(granted_secrets)}, rate_limit_obligation), labels_obligation)
