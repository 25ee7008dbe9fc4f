package mcp_guard

import rego.v1

private_origin := {"decision_id": "d-private-1", "server": "tickets", "tool": "get_ticket", "time": "2026-01-01T00:00:00Z"}

untrusted_origin := {"decision_id": "d-untrusted-2", "server": "fetch", "tool": "fetch", "time": "2026-01-01T00:00:01Z"}

# The input of a call whose flow holds the given labels (each labeled by the matching origin above).
in_flow(inp, labels) := object.union(inp, {"context": {"flow": {
	"id": "f-test",
	"labels": labels,
	"labeled_by": {l: o | some l in labels; o := origin_of(l)},
	"history": [],
}}})

origin_of("private") := private_origin

origin_of("untrusted") := untrusted_origin

# A fetch call whose URL's parse (context.urls) names host.
fetch_call(url, host) := with_urls(call_ro("alice", "fetch", "fetch", {"url": url}), {url: https_at(host)})

# local-agent (developer) may use every tool of "everything"; annotated openWorldHint it is an egress sink.
post_call := request("tools/call", "local-agent", [], "everything", "echo", {"message": "hi"}, {"openWorldHint": true})

labels_of(inp) := d.obligations.labels if {
	d := decision with input as inp
	d.allow == true
}

# ---------------------------------------------------------------- labels

test_reading_tickets_labels_the_flow_private if {
	labels_of(call_ro("alice", "tickets", "get_ticket", {"id": 1})) == ["private"]
	labels_of(request("resources/read", "alice", [], "tickets", "ticket://1", {}, {})) == ["private"]
	labels_of(call_ro("bob", "warehouse", "query", {"sql": "SELECT 1"})) == ["private"]
}

test_fetching_labels_the_flow_untrusted if {
	labels_of(fetch_call("https://example.com/page", "example.com")) == ["untrusted"]
}

test_open_world_tools_are_untrusted_input if {
	labels_of(post_call) == ["untrusted"]
}

test_writes_and_harmless_tools_add_no_label if {
	d := decision with input as call("alice", "tickets", "create_ticket", {"title": "t", "body": "b"})
	d.allow == true
	not d.obligations.labels
	t := decision with input as call_ro("alice", "time", "get_current_time", {})
	t.allow == true
	not t.obligations.labels
}

test_listings_carry_no_labels if {
	d := decision with input as request("tools/list", "alice", [], "tickets", "get_ticket", {}, {"readOnlyHint": true})
	d.allow == true
	not d.obligations.labels
}

test_labels_are_the_union_of_matching_rules if {
	rules := [
		{"server": "tickets", "tools": ["get_*"], "labels": ["private", "pii"]},
		{"tools": ["*"], "labels": ["private", "audited"]},
	]
	labels_of(call_ro("alice", "tickets", "get_ticket", {"id": 1})) == ["audited", "pii", "private"] with data.mcp_guard_config.flows.labels as rules
}

test_annotation_rules_need_every_named_hint if {
	rules := [{"tools": ["*"], "annotations": {"readOnlyHint": true, "openWorldHint": true}, "labels": ["untrusted"]}]
	open_world := with_urls(request("tools/call", "alice", [], "fetch", "fetch", {"url": "https://example.com/"}, {"readOnlyHint": true, "openWorldHint": true}), {"https://example.com/": https_at("example.com")})
	labels_of(open_world) == ["untrusted"] with data.mcp_guard_config.flows.labels as rules
	d := decision with input as fetch_call("https://example.com/", "example.com") with data.mcp_guard_config.flows.labels as rules
	not d.obligations.labels # readOnlyHint only
}

test_a_malformed_label_rule_is_an_invalid_obligation_not_silence if {
	not_object := labels_of(call_ro("alice", "tickets", "get_ticket", {"id": 1})) with data.mcp_guard_config.flows.labels as ["private"]
	null in not_object
	bad_labels := labels_of(call_ro("alice", "tickets", "get_ticket", {"id": 1})) with data.mcp_guard_config.flows.labels as [{"server": "tickets", "tools": ["*"], "labels": "private"}]
	bad_labels == [null]
	mixed := labels_of(call_ro("alice", "tickets", "get_ticket", {"id": 1})) with data.mcp_guard_config.flows.labels as [{"server": "tickets", "tools": ["*"], "labels": ["private", 7]}]
	mixed == [null]
}

# ---------------------------------------------------------------- egress sinks

test_fetch_and_open_world_tools_are_egress_sinks if {
	flow_egress with input as fetch_call("https://example.com/", "example.com")
	flow_egress with input as post_call
	not flow_egress with input as call_ro("alice", "tickets", "get_ticket", {"id": 1})
	not flow_egress with input as request("tools/list", "local-agent", [], "everything", "echo", {}, {"openWorldHint": true})
}

test_except_hosts_exempts_calls_whose_every_url_goes_there if {
	egress := [{"server": "fetch", "tools": ["fetch"], "except_hosts": ["docs.internal", "*.corp.example"]}]
	not flow_egress with input as fetch_call("https://docs.internal/a?q=1", "docs.internal") with data.mcp_guard_config.flows.egress as egress
	not flow_egress with input as fetch_call("https://wiki.corp.example/", "wiki.corp.example") with data.mcp_guard_config.flows.egress as egress
	flow_egress with input as fetch_call("https://example.com/", "example.com") with data.mcp_guard_config.flows.egress as egress
	flow_egress with input as with_urls(call_ro("alice", "fetch", "fetch", {"url": "https://user@docs.internal/"}), {"https://user@docs.internal/": url_parse("https", "docs.internal", true)}) with data.mcp_guard_config.flows.egress as egress
	two := with_urls(call_ro("alice", "fetch", "fetch", {"url": "https://docs.internal/", "href": "https://example.com/"}), {"https://docs.internal/": https_at("docs.internal"), "https://example.com/": https_at("example.com")})
	backslash := "https://evil.net\\.wiki.corp.example/"
	flow_egress with input as fetch_call(backslash, "evil.net") with data.mcp_guard_config.flows.egress as egress
	unparsed := call_ro("alice", "fetch", "fetch", {"url": "https://docs.internal/"})
	flow_egress with input as unparsed with data.mcp_guard_config.flows.egress as egress
	flow_egress with input as two with data.mcp_guard_config.flows.egress as egress
	no_url := call_ro("alice", "fetch", "fetch", {"q": "x"})
	flow_egress with input as no_url with data.mcp_guard_config.flows.egress as egress
}

# ---------------------------------------------------------------- the trifecta rule

test_egress_after_private_and_untrusted_is_denied_naming_the_tainting_decisions if {
	inp := in_flow(post_call, ["private", "untrusted"])
	d := decision with input as inp
	d.allow == false
	some r in d.reasons
	contains(r, "everything__echo is an egress sink")
	contains(r, "'private' (decision d-private-1: tickets get_ticket)")
	contains(r, "'untrusted' (decision d-untrusted-2: fetch fetch)")
	denied_with(in_flow(fetch_call("https://example.com/", "example.com"), ["private", "untrusted"]), "d-private-1")
}

test_one_leg_of_the_trifecta_is_not_enough if {
	allowed(in_flow(post_call, ["private"]))
	allowed(in_flow(post_call, ["untrusted"]))
	allowed(in_flow(post_call, []))
	allowed(post_call) # no flow in the input (e.g. a bundle evaluated by hand)
}

test_a_tainted_flow_may_still_read_and_write_inside if {
	allowed(in_flow(call_ro("alice", "tickets", "get_ticket", {"id": 1}), ["private", "untrusted"]))
	allowed(in_flow(call("alice", "tickets", "add_comment", {"id": 1, "text": "x"}), ["private", "untrusted"]))
}

test_a_sink_stays_listed_in_a_tainted_flow if {
	allowed(in_flow(request("tools/list", "local-agent", [], "everything", "echo", {}, {"openWorldHint": true}), ["private", "untrusted"]))
}

test_the_label_combinations_are_configurable if {
	after := [["pii"]]
	inp := object.union(post_call, {"context": {"flow": {"id": "f", "labels": ["pii"], "labeled_by": {}, "history": []}}})
	d := decision with input as inp with data.mcp_guard_config.flows.deny_egress_after as after
	d.allow == false
	some r in d.reasons
	contains(r, "this flow holds 'pii';")
	allowed(in_flow(post_call, ["private", "untrusted"])) with data.mcp_guard_config.flows.deny_egress_after as after
	allowed(in_flow(post_call, ["private", "untrusted"])) with data.mcp_guard_config.flows.deny_egress_after as []
}

test_a_malformed_deny_egress_after_keeps_the_rule if {
	denied_with(in_flow(post_call, ["private", "untrusted"]), "egress sink") with data.mcp_guard_config.flows.deny_egress_after as "private"
	denied_with(in_flow(post_call, []), "malformed entry") with data.mcp_guard_config.flows.deny_egress_after as ["private"]
	denied_with(in_flow(post_call, []), "malformed entry") with data.mcp_guard_config.flows.deny_egress_after as [[]]
}

test_a_malformed_flow_in_the_input_is_an_empty_flow if {
	allowed(object.union(post_call, {"context": {"flow": "tainted"}}))
	allowed(object.union(post_call, {"context": {"flow": {"labels": "private"}}}))
}
