package mcp_guard

import rego.v1

test_default_deny_without_roles if {
	denied_with(request("tools/call", "mallory", [], "tickets", "list_tickets", {}, {}), "has no roles")
}

test_default_deny_unknown_server if {
	denied_with(call("alice", "payroll", "list_salaries", {}), "no role of principal 'alice' allows payroll__list_salaries")
}

test_allow_has_reason_and_obligations if {
	d := decision with input as call_ro("alice", "tickets", "list_tickets", {})
	d.allow == true
	d.reasons == ["role 'support' allows tickets__list_tickets"]
	d.obligations == {
		"secrets": ["tickets_token"],
		"rate_limit": [{"key": "tool_calls|alice|tickets|list_tickets", "limit": 300, "window_s": 60}],
		"labels": ["private"],
	}
}

test_deny_has_empty_obligations if {
	d := decision with input as request("tools/call", "alice", [], "tickets", "delete_ticket", {"id": 1}, {"destructiveHint": true})
	d.allow == false
	d.obligations == {}
}

test_decision_shape_always_defined if {
	d := decision with input as {}
	d.allow == false
	count(d.reasons) > 0
}

test_explicit_deny_wins_over_grant if {
	# local-agent's developer role grants everything on "everything", but get-env is blocked.
	inp := call("local-agent", "everything", "get-env", {})
	granted with input as inp
	denied_with(inp, "blocked for everyone")
}

test_deny_reasons_sorted_and_complete if {
	d := decision with input as call("bob", "warehouse", "query", {"sql": "DELETE FROM t; DROP TABLE t"})
	d.allow == false
	d.reasons == sort(d.reasons)
	d.reasons == [
		"argument 'sql' of warehouse__query: only a single SQL statement is allowed (found ';' between statements)",
		"argument 'sql' of warehouse__query: only read-only queries are allowed: found DELETE, DROP",
	]
}

test_obligations_union_of_matching_grants if {
	d := decision with input as request("tools/call", "x", ["support", "tickets-admin"], "tickets", "get_ticket", {"id": 1}, {})
	d.allow == true
	d.obligations.secrets == ["tickets_token"]
	d.reasons == ["role 'support', 'tickets-admin' allows tickets__get_ticket"]
}

test_star_role_applies_to_everyone if {
	allowed(request("tools/call", "nobody", [], "time", "get_current_time", {"timezone": "UTC"}, {"readOnlyHint": true}))
}
