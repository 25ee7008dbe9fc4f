# Normalised views of the input document and the bundle's configuration.
#
# Every helper here is defensive about types: a malformed input must lead to a deny with a
# readable reason, never to a builtin type error (which would surface as engine_error) and never
# to an allow.
package mcp_guard

import rego.v1

# Bundle configuration (data.json). Missing sections fall back to empty values.
config := object.get(data, "mcp_guard_config", {})

config_roles := object.get(config, "roles", {})

separator := object.get(config, "tool_separator", "__")

principal_id := input.principal.id if is_string(input.principal.id)

else := "(unknown)"

# Roles declared for the principal (strings only).
principal_roles contains r if {
	is_array(input.principal.roles)
	some r in input.principal.roles
	is_string(r)
}

# The roles whose grants apply: the principal's own, plus the "*" role that applies to everyone.
effective_roles contains r if some r in principal_roles

effective_roles contains "*"

server := input.server if is_string(input.server)

tool := input.tool if is_string(input.tool)

action := input.action if is_string(input.action)

else := ""

# Which grant list an action is checked against.
kind := "resources" if startswith(action, "resources/")

else := "prompts" if startswith(action, "prompts/")

else := "prompts" if action == "completion/complete"

else := "tools"

# "tickets__create_ticket", or just the server name for a server-level question.
target := concat(separator, [server, tool]) if {
	server
	tool
}

else := server if server

else := "(no target)"

annotations := input.tool_info.annotations if is_object(input.tool_info.annotations)

else := {}

arguments := input.arguments if is_object(input.arguments)

else := {}

suspicious_flags := [f | some f in input.tool_info.suspicious; is_string(f)] if is_array(input.tool_info.suspicious)

else := []

secrets_seen := [s | some s in input.context.secrets_seen; is_string(s)] if is_array(input.context.secrets_seen)

else := []

# True when a string matches any glob of a list. Globs have no delimiter, so "*" spans dots and
# slashes; config values that are not strings are ignored.
glob_any(patterns, value) if {
	is_array(patterns)
	some p in patterns
	is_string(p)
	glob.match(p, null, value)
}
