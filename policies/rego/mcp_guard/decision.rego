# mcp-guard default policy: the decision document.
#
# The proxy evaluates data.mcp_guard.decision for every request that touches an upstream and
# expects {"allow": bool, "reasons": [string], "obligations": object}. Anything else is a
# fail-closed deny. Configuration (roles, allowlists, blocked tools) lives in data.json under
# data.mcp_guard_config; see policies/README.md.
#
# Composition: a request is allowed iff some role of the principal grants the target (grants.rego)
# AND no deny rule fires (denies.rego, arguments.rego). An explicit deny always wins.
package mcp_guard

import rego.v1

default decision := {
	"allow": false,
	"reasons": ["mcp_guard policy produced no decision for this input"],
	"obligations": {},
}

decision := {"allow": true, "reasons": allow_reasons, "obligations": obligations} if {
	allow
}

decision := {"allow": false, "reasons": deny_reasons, "obligations": {}} if {
	not allow
}

allow if {
	granted
	count(deny) == 0
}

# Every explicit deny, sorted so that the order is stable across engines.
deny_reasons := sort([msg | some msg in deny]) if count(deny) > 0

deny_reasons := [not_granted_reason] if {
	count(deny) == 0
	not granted
}

allow_reasons := [sprintf("role '%s' allows %s", [role, target])] if {
	roles := sort([r | some [r, _] in matching_grants])
	role := roles[0]
}

not_granted_reason := sprintf("no role of principal '%s' allows %s", [principal_id, target]) if {
	count(principal_roles) > 0
}

not_granted_reason := sprintf("principal '%s' has no roles, so it may not use %s", [principal_id, target]) if {
	count(principal_roles) == 0
}

# Obligations the pipeline must honour on an allowed request:
#   secrets: the names of the configured secrets the call may use (union over matching grants).
obligations := {"secrets": sort([s | some s in granted_secrets])}
