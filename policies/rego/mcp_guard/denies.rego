# Explicit denies about the request, the target and the caller. Each message tells the agent what was
# refused and why, so it can change course instead of retrying. An explicit deny always wins over a
# grant (decision.rego).
package mcp_guard

import rego.v1

# Requests mcp-guard does not know how to judge are refused, whatever the grants say.
deny contains msg if {
	not well_formed
	some msg in malformed_request
}

well_formed if {
	kind
	server
	tool
}

malformed_request contains msg if {
	not kind
	msg := sprintf("action '%s' is not governed by this policy", [action])
}

malformed_request contains "the request names no upstream server" if not server

malformed_request contains msg if {
	server
	not tool
	msg := sprintf("the request to server '%s' names no tool, resource or prompt", [server])
}

# Destructive tools (annotations.destructiveHint == true) need a grant with "destructive": true.
# (Only an explicit true counts: annotations are hints from the upstream, the grant lists are the
# real control.)
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
	some r in principal_roles
	r in object.get(config, ["secrets_in_arguments", "allow_roles"], [])
}

secrets_in_arguments_exempt if {
	server
	glob_any(object.get(config, ["secrets_in_arguments", "allow_servers"], []), server)
}

# Tools blocked for everyone (admins included), e.g. tools that dump the environment.
# data: "blocked": [{"server": "<glob>", "tools": ["<glob>"], "reason": "..."}]
deny contains msg if {
	kind == "tools"
	some b in object.get(config, "blocked", [])
	is_object(b)
	glob_one(b.server, server)
	glob_any(object.get(b, "tools", []), tool)
	msg := sprintf("%s is blocked for everyone: %s", [target, object.get(b, "reason", "listed in blocked")])
}
