# Role grants: which servers, tools, resources and prompts each role may use.
#
# data.mcp_guard_config.roles.<role>.grants is a list of
#   {"server": "<glob>", "tools": ["<glob>", ...], "resources": ["<glob>", ...], "prompts": [...],
#    "read_only": bool, "destructive": bool, "secrets": ["<secret name>", ...]}
# A grant matches when its server glob matches input.server and one of its globs for the action's
# kind (tools / resources / prompts) matches input.tool (the tool or prompt name, or the resource
# URI). With "read_only": true it only matches tools annotated readOnlyHint == true. With
# "destructive": true it also lets the role use tools annotated destructiveHint == true
# (denies.rego). Nothing is granted by default.
package mcp_guard

import rego.v1

# [role, index] of every grant that matches the request. (Written without helper functions where
# possible: this rule is on every request's path.)
matching_grants contains [role, i] if {
	some role in effective_roles
	some i, g in grants_of(role)
	glob_one(g.server, server)
	glob_any(g[kind], tool)
	read_only_satisfied(g)
}

granted if count(matching_grants) > 0

grants_of(role) := gs if {
	gs := config_roles[role].grants
	is_array(gs)
} else := []

# A read_only grant only matches tools annotated readOnlyHint == true.
read_only_satisfied(g) if {
	object.get(g, "read_only", false) != true
} else if {
	annotations.readOnlyHint == true
}

# A matching grant that allows destructive tools.
destructive_granted if {
	some [role, i] in matching_grants
	config_roles[role].grants[i].destructive == true
}

# Secret names the matching grants make available to the call (obligations.secrets).
granted_secrets contains s if {
	some [role, i] in matching_grants
	some s in array_or_empty(config_roles[role].grants[i].secrets)
	is_string(s)
}

# The roles whose grants match, for the allow reason.
granting_roles contains role if some [role, _] in matching_grants
