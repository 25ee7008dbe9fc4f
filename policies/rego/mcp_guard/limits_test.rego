package mcp_guard

import rego.v1

per_tool := {"name": "tool_calls", "by": ["principal", "server", "tool"], "limit": 5, "window_s": 60}

obligations_of(inp) := d.obligations if {
	d := decision with input as inp
	d.allow == true
}

test_default_bundle_limits_each_principal_per_tool if {
	o := obligations_of(call("alice", "tickets", "get_ticket", {"id": 1}))
	o.rate_limit == [{"key": "tool_calls|alice|tickets|get_ticket", "limit": 300, "window_s": 60}]
	o.secrets == ["tickets_token"]
}

test_the_key_never_names_the_session if {
	inp := call("alice", "tickets", "get_ticket", {"id": 1})
	other := object.union(inp, {"session": {"id": "a-brand-new-session"}})
	obligations_of(inp).rate_limit == obligations_of(other).rate_limit
}

test_rate_limit_only_for_the_declared_actions if {
	o := obligations_of(request("resources/read", "alice", [], "tickets", "ticket://1", {}, {}))
	not o.rate_limit
	o2 := obligations_of(request("resources/read", "alice", [], "tickets", "ticket://1", {}, {})) with data.mcp_guard_config.limits.rate as [object.union(per_tool, {"actions": ["resources/read"]})]
	o2.rate_limit == [{"key": "tool_calls|alice|tickets|ticket://1", "limit": 5, "window_s": 60}]
}

test_server_and_tool_globs_select_declarations if {
	rate := [
		object.union(per_tool, {"name": "creates", "tools": ["create_*"], "limit": 2}),
		{"name": "all", "by": ["principal"], "limit": 100, "window_s": 3600},
		object.union(per_tool, {"name": "warehouse", "servers": ["warehouse"]}),
	]
	create := obligations_of(call("alice", "tickets", "create_ticket", {"title": "t", "body": "b"})) with data.mcp_guard_config.limits.rate as rate
	create.rate_limit == [
		{"key": "creates|alice|tickets|create_ticket", "limit": 2, "window_s": 60},
		{"key": "all|alice", "limit": 100, "window_s": 3600},
	]
	get := obligations_of(call("alice", "tickets", "get_ticket", {"id": 1})) with data.mcp_guard_config.limits.rate as rate
	get.rate_limit == [{"key": "all|alice", "limit": 100, "window_s": 3600}]
}

test_no_declarations_no_obligation if {
	o := obligations_of(call("alice", "tickets", "get_ticket", {"id": 1})) with data.mcp_guard_config.limits.rate as []
	not o.rate_limit
	o.secrets == ["tickets_token"]
}

test_malformed_declarations_become_invalid_entries if {
	bad_by := obligations_of(call("alice", "tickets", "get_ticket", {"id": 1})) with data.mcp_guard_config.limits.rate as [object.union(per_tool, {"by": ["session"]})]
	bad_by.rate_limit == [{"key": null, "limit": 5, "window_s": 60}]
	no_name := obligations_of(call("alice", "tickets", "get_ticket", {"id": 1})) with data.mcp_guard_config.limits.rate as [object.remove(per_tool, ["name"])]
	no_name.rate_limit[0].key == null
	not_object := obligations_of(call("alice", "tickets", "get_ticket", {"id": 1})) with data.mcp_guard_config.limits.rate as ["tool_calls"]
	not_object.rate_limit == [{"key": null, "limit": null, "window_s": null}]
	not_list := obligations_of(call("alice", "tickets", "get_ticket", {"id": 1})) with data.mcp_guard_config.limits.rate as {"name": "x"}
	not_list.rate_limit == [{"key": null, "limit": null, "window_s": null}]

	# a filter that is not a list keeps the limit rather than lifting it
	bad_filter := obligations_of(call("alice", "tickets", "get_ticket", {"id": 1})) with data.mcp_guard_config.limits.rate as [object.union(per_tool, {"tools": "create_*"})]
	bad_filter.rate_limit[0].key == "tool_calls|alice|tickets|get_ticket"
}

test_placeholder_like_values_are_taken_literally if {
	o := obligations_of(request("tools/call", "a|{server}", ["support"], "tickets", "get_ticket", {"id": 1}, {}))
	o.rate_limit[0].key == "tool_calls|a|{server}|tickets|get_ticket"
}

test_usage_reads_the_count_for_a_key if {
	inp := object.union(call("alice", "tickets", "get_ticket", {"id": 1}), {"context": {"usage": {"tool_calls|alice|tickets|get_ticket": 7}}})
	usage("tool_calls|alice|tickets|get_ticket") == 7 with input as inp
	usage("tool_calls|alice|tickets|list_tickets") == 0 with input as inp
	usage("x") == 0 with input as object.union(inp, {"context": {"usage": {"x": "many"}}})
}

test_denied_calls_carry_no_rate_limit if {
	d := decision with input as call("mallory", "tickets", "get_ticket", {"id": 1})
	d.allow == false
	d.obligations == {}
}
