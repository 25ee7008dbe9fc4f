package mcp_guard

import rego.v1

destructive := {"destructiveHint": true}

test_destructive_denied_without_destructive_grant if {
	denied_with(
		request("tools/call", "alice", [], "tickets", "delete_ticket", {"id": 1}, destructive),
		"tickets__delete_ticket is destructive (destructiveHint) and no role of principal 'alice' allows destructive tools",
	)
}

test_destructive_allowed_with_destructive_grant if {
	allowed(request("tools/call", "admin", ["tickets-admin"], "tickets", "delete_ticket", {"id": 1}, destructive))
	allowed(request("tools/call", "local-agent", [], "memory", "delete_entities", {"entityNames": ["x"]}, destructive))
}

test_destructive_false_is_not_destructive if {
	allowed(request("tools/call", "alice", [], "tickets", "close_ticket", {"id": 1}, {"destructiveHint": false}))
}

test_destructive_string_hint_is_not_true if {
	# only a boolean true counts; the grant still decides
	allowed(request("tools/call", "alice", [], "tickets", "close_ticket", {"id": 1}, {"destructiveHint": "yes"}))
}

test_blocked_tool_denied_for_everyone if {
	denied_with(call("local-agent", "everything", "get-env", {}), "everything__get-env is blocked for everyone")
	denied_with(call("local-agent", "everything", "gzip-file-as-resource", {}), "blocked for everyone")
	allowed(call("local-agent", "everything", "echo", {"message": "hi"}))
}

test_suspicious_tool_denied_until_approved if {
	inp := object.union(
		call("local-agent", "everything", "echo", {}),
		{"tool_info": {"annotations": {}, "definition_sha256": "abc", "suspicious": ["hidden-instructions"]}},
	)
	denied_with(inp, "flagged as suspicious (hidden-instructions)")
	allowed(inp) with data.mcp_guard_config.suspicious_approved as ["abc"]
}

test_secrets_in_arguments_denied if {
	inp := object.union(
		call("alice", "tickets", "create_ticket", {"title": "x", "body": "ghp_..."}),
		{"context": {"secrets_seen": ["github_token"], "session_calls": 1}},
	)
	denied_with(inp, "contain what looks like a secret (github_token)")
	allowed(inp) with data.mcp_guard_config.secrets_in_arguments as {"allow_roles": ["support"]}
	allowed(inp) with data.mcp_guard_config.secrets_in_arguments as {"allow_servers": ["tick*"]}
}

test_unknown_action_denied if {
	denied_with(request("sampling/createMessage", "local-agent", [], "everything", "echo", {}, {}), "action 'sampling/createMessage' is not governed")
	denied_with(request(7, "local-agent", [], "everything", "echo", {}, {}), "is not governed")
}

test_missing_server_or_target_denied if {
	denied_with(request("tools/call", "local-agent", [], null, "echo", {}, {}), "names no upstream server")
	denied_with(request("tools/call", "local-agent", [], "everything", null, {}, {}), "names no tool")
}
