# Explicit denies about the target and the caller. Each message tells the agent what was refused
# and why, so it can change course instead of retrying. An explicit deny always wins over a grant.
package mcp_guard

import rego.v1

# Destructive tools (annotations.destructiveHint == true) need a grant with "destructive": true.
deny contains msg if {
	kind == "tools"
	annotations.destructiveHint == true
	granted
	not destructive_granted
	msg := sprintf(
		"%s is destructive (destructiveHint) and no role of principal '%s' allows destructive tools on it",
		[target, principal_id],
	)
}

# Tools whose description was flagged as suspicious (possible prompt injection / tool poisoning)
# stay blocked until their exact definition is approved in data (suspicious_approved: [sha256]).
deny contains msg if {
	count(suspicious_flags) > 0
	not suspicious_definition_approved
	msg := sprintf(
		"%s is blocked: its description was flagged as suspicious (%s); an administrator must review it",
		[target, concat(", ", sort(suspicious_flags))],
	)
}

suspicious_definition_approved if {
	sha := input.tool_info.definition_sha256
	is_string(sha)
	some approved in object.get(config, "suspicious_approved", [])
	approved == sha
}

# Arguments that look like credentials: agents must never hold or pass secrets; mcp-guard injects
# them. Exempt roles/servers are listed in data (secrets_in_arguments).
deny contains msg if {
	count(secrets_seen) > 0
	not secrets_in_arguments_exempt
	msg := sprintf(
		"the arguments for %s contain what looks like a secret (%s); do not pass credentials to tools, mcp-guard injects them",
		[target, concat(", ", sort(secrets_seen))],
	)
}

secrets_in_arguments_exempt if {
	exempt := object.get(config, "secrets_in_arguments", {})
	some r in principal_roles
	some allowed in object.get(exempt, "allow_roles", [])
	r == allowed
}

secrets_in_arguments_exempt if {
	exempt := object.get(config, "secrets_in_arguments", {})
	server
	glob_any(object.get(exempt, "allow_servers", []), server)
}

# Tools blocked for everyone (including admins), e.g. tools that dump the environment.
# data.mcp_guard_config.blocked: [{"server": glob, "tools": [glob], "reason": string}]
deny contains msg if {
	some b in object.get(config, "blocked", [])
	is_object(b)
	server
	tool
	is_string(b.server)
	glob.match(b.server, null, server)
	glob_any(object.get(b, "tools", []), tool)
	msg := sprintf("%s is blocked for everyone: %s", [target, object.get(b, "reason", "listed in blocked")])
}
