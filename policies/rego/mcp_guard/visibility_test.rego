# Listing actions: a principal sees exactly what it could call.
package mcp_guard

import rego.v1

listing(principal, srv, name, annotations) := request("tools/list", principal, [], srv, name, {}, annotations)

test_list_shows_granted_tools if {
	allowed(listing("alice", "tickets", "create_ticket", {}))
	allowed(listing("bob", "warehouse", "query", {"readOnlyHint": true}))
}

test_list_hides_ungranted_tools if {
	not allowed(listing("alice", "warehouse", "query", {"readOnlyHint": true}))
	not allowed(listing("bob", "tickets", "create_ticket", {}))
}

test_list_hides_destructive_tools_without_destructive_grant if {
	not allowed(listing("alice", "tickets", "delete_ticket", {"destructiveHint": true}))
	allowed(request("tools/list", "a", ["tickets-admin"], "tickets", "delete_ticket", {}, {"destructiveHint": true}))
}

test_list_hides_blocked_tools if {
	not allowed(listing("local-agent", "everything", "get-env", {}))
}

test_list_hides_read_write_tools_from_read_only_grants if {
	not allowed(listing("bob", "files", "write_file", {"readOnlyHint": false, "destructiveHint": true}))
	allowed(listing("bob", "files", "read_text_file", {"readOnlyHint": true}))
}

test_resource_and_prompt_listings if {
	allowed(request("resources/list", "alice", [], "tickets", "ticket://recent", {}, {}))
	allowed(request("resources/templates/list", "alice", [], "tickets", "ticket://{id}", {}, {}))
	allowed(request("prompts/list", "alice", [], "tickets", "triage", {}, {}))
	not allowed(request("prompts/list", "bob", [], "tickets", "triage", {}, {}))
}
