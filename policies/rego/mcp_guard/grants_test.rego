package mcp_guard

import rego.v1

test_support_tickets_tools if {
	allowed(call("alice", "tickets", "create_ticket", {"title": "t", "body": "b"}))
	allowed(call_ro("alice", "tickets", "list_tickets", {}))
}

test_support_has_no_warehouse if {
	denied_with(call_ro("alice", "warehouse", "query", {"sql": "SELECT 1"}), "no role of principal 'alice'")
}

test_analyst_warehouse_read_only if {
	allowed(call_ro("bob", "warehouse", "query", {"sql": "SELECT 1"}))
	allowed(call_ro("bob", "warehouse", "list_tables", {}))
}

test_read_only_grant_needs_read_only_hint if {
	# the analyst's warehouse grant is read_only: a tool without readOnlyHint is not granted
	denied_with(call("bob", "warehouse", "list_tables", {}), "no role of principal 'bob'")
	denied_with(
		request("tools/call", "bob", [], "warehouse", "list_tables", {}, {"readOnlyHint": false}),
		"no role",
	)
}

test_analyst_tickets_limited_to_named_tools if {
	allowed(call_ro("bob", "tickets", "get_ticket", {"id": 1}))
	denied_with(call_ro("bob", "tickets", "whoami", {}), "no role of principal 'bob'")
}

test_roles_from_input_and_from_data if {
	allowed(request("tools/call", "carol", ["analyst"], "warehouse", "list_tables", {}, {"readOnlyHint": true}))
	principal_roles == {"support"} with input as call("alice", "tickets", "x", {})
	principal_roles == {"support", "analyst"} with input as request("tools/call", "alice", ["analyst", 7], "s", "t", {}, {})
}

test_server_and_tool_globs if {
	cfg := {"roles": {"r": {"grants": [{"server": "ti*", "tools": ["get_*"]}]}}}
	allowed(as_role("r", "tickets", "get_ticket", {}, {})) with data.mcp_guard_config as cfg
	not allowed(as_role("r", "tickets", "delete_ticket", {}, {})) with data.mcp_guard_config as cfg
	not allowed(as_role("r", "warehouse", "get_ticket", {}, {})) with data.mcp_guard_config as cfg
}

test_malformed_grants_grant_nothing if {
	cfg := {"roles": {"r": {"grants": [7, {"server": 1, "tools": ["*"]}, {"server": "a", "tools": "*"}]}}}
	not allowed(as_role("r", "a", "b", {}, {})) with data.mcp_guard_config as cfg
	cfg2 := {"roles": {"r": {"grants": "everything"}}}
	not allowed(as_role("r", "a", "b", {}, {})) with data.mcp_guard_config as cfg2
}

test_no_config_denies_everything if {
	not allowed(as_role("developer", "files", "read_text_file", {}, {})) with data.mcp_guard_config as {}
}

test_resources_use_resource_grants if {
	allowed(request("resources/read", "alice", [], "tickets", "ticket://recent", {}, {}))
	denied_with(request("resources/read", "alice", [], "warehouse", "warehouse://schema", {}, {}), "warehouse warehouse://schema")
}

test_prompts_use_prompt_grants if {
	allowed(request("prompts/get", "alice", [], "tickets", "triage", {"ticket_id": "1"}, {}))
	not allowed(request("prompts/get", "bob", [], "tickets", "triage", {"ticket_id": "1"}, {}))
}

test_tool_grant_does_not_grant_resources if {
	cfg := {"roles": {"r": {"grants": [{"server": "s", "tools": ["*"]}]}}}
	not allowed(request("resources/read", "x", ["r"], "s", "file:///a", {}, {})) with data.mcp_guard_config as cfg
}

test_granted_secrets_only_from_matching_grants if {
	granted_secrets == {"tickets_token"} with input as call_ro("bob", "tickets", "get_ticket", {})
	count(granted_secrets) == 0 with input as call_ro("bob", "warehouse", "query", {"sql": "select 1"})
}

# resources/unsubscribe reaches an upstream (mcp-guard forwards it when the last subscriber leaves): it is
# decided like the read and the subscribe it undoes.
test_unsubscribe_is_granted_like_a_read if {
	allowed(request("resources/unsubscribe", "alice", [], "tickets", "ticket://recent", {}, {}))
	denied_with(request("resources/unsubscribe", "alice", [], "warehouse", "warehouse://schema", {}, {}), "warehouse warehouse://schema")
}
