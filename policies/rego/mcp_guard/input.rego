# Normalised views of the input document and of the bundle's configuration (data.json).
#
# Every helper is defensive about types: a malformed input leads to a deny with a readable reason,
# never to a builtin type error (which would surface as engine_error) and never to an allow.
package mcp_guard

import rego.v1

# Bundle configuration (data.json, key "mcp_guard_config"). Missing sections mean "nothing granted".
config := data.mcp_guard_config if is_object(data.mcp_guard_config)

else := {}

config_roles := object.get(config, "roles", {})

separator := s if {
	s := object.get(config, "tool_separator", "__")
	is_string(s)
} else := "__"

principal_id := input.principal.id if is_string(input.principal.id)

else := "(unknown)"

# Roles the proxy reports for the principal (its config), plus roles the bundle itself assigns by
# principal id (data: "principals": {"<id>": ["<role>", ...]}).
principal_roles := {r | some r in array_or_empty(input.principal.roles); is_string(r)} | {r |
	some r in array_or_empty(object.get(object.get(config, "principals", {}), principal_id, []))
	is_string(r)
}

# The roles whose grants apply: the principal's own, plus "*", which applies to everyone.
effective_roles := principal_roles | {"*"}

server := input.server if is_string(input.server)

tool := input.tool if is_string(input.tool)

action := input.action if is_string(input.action)

else := ""

# The grant list an action is checked against. Listing actions ask, per item, whether the principal
# may see it; they use the same grants as the matching call, so nobody sees what they cannot call.
action_kinds := {
	"tools/call": "tools",
	"tools/list": "tools",
	"resources/read": "resources",
	"resources/list": "resources",
	"resources/templates/list": "resources",
	"resources/subscribe": "resources",
	"resources/unsubscribe": "resources",
	"prompts/get": "prompts",
	"prompts/list": "prompts",
	"completion/complete": "prompts",
}

kind := action_kinds[action]

list_actions := {"tools/list", "resources/list", "resources/templates/list", "prompts/list"}

is_list_action if action in list_actions

# "tickets__create_ticket" (tools, prompts) or "tickets ticket://recent" (resources) for messages.
target := concat(separator, [server, tool]) if {
	server
	tool
	kind != "resources"
} else := sprintf("%s %s", [server, tool]) if {
	server
	tool
} else := server if server

else := "(no target)"

annotations := input.tool_info.annotations if is_object(input.tool_info.annotations)

else := {}

arguments := input.arguments if is_object(input.arguments)

else := {}

# The content of every form the client accepted when an upstream asked it something during this call,
# by the upstream's key. input.input_responses is present only when mcp-guard asks again before the
# answers go upstream (elicitation, sampling and roots results, as the client gave them).
answered_forms[key] := content if {
	is_object(input.input_responses)
	some key, response in input.input_responses
	is_object(response)
	response.action == "accept"
	content := response.content
	is_object(content)
}

suspicious_flags := [f | some f in input.tool_info.suspicious; is_string(f)] if is_array(input.tool_info.suspicious)

else := []

secrets_seen := [s | some s in input.context.secrets_seen; is_string(s)] if is_array(input.context.secrets_seen)

else := []

array_or_empty(x) := x if is_array(x)

else := []

# True when a string matches any glob of a list. Globs have no delimiter (null), so "*" spans dots
# and slashes; config values that are not strings are ignored. Exact names and "*" are checked first:
# they are the common case, and much cheaper than glob.match (these rules are on every request's path).
glob_any(patterns, value) if {
	is_array(patterns)
	value in patterns
} else if {
	is_array(patterns)
	"*" in patterns
} else if {
	globs_match(patterns, value)
}

globs_match(patterns, value) if {
	is_array(patterns)
	some p in patterns
	is_string(p)
	glob.match(p, null, value)
}

# One glob (exact and "*" first).
glob_one(pattern, value) if {
	pattern == value
} else if {
	pattern == "*"
} else if {
	is_string(pattern)
	glob.match(pattern, null, value)
}
