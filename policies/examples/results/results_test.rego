package mcp_guard

import rego.v1

# A tools/result input for a principal of the default data (alice: support) with the given text blocks
# and structured content.
result_input(texts, structured) := {
	"action": "tools/result",
	"principal": {"id": "alice", "roles": ["support"], "attributes": {}},
	"session": {"id": "s-results", "transport": "stdio", "client": {"name": "test", "version": "1"}},
	"server": "tickets",
	"tool": "get_ticket",
	"arguments": {"id": 7},
	"context": {"time": "2026-11-25T12:00:00Z", "secrets_seen": [], "usage": {}},
	"result": {
		"is_error": false,
		"content": [{"type": "text", "text": t} | some t in texts],
		"structured_content": structured,
		"truncated": false,
	},
}

result_of(texts, structured) := d if {
	d := decision_with_results with input as result_input(texts, structured)
}

test_an_ordinary_result_passes_with_card_numbers_redacted if {
	d := result_of(["ticket 7: printer on fire"], null)
	d.allow == true
	d.obligations == {"redact": {"patterns": result_redact_patterns}}
	not d.obligations.labels
}

test_the_card_pattern_matches_card_numbers_and_not_ticket_numbers if {
	some p in result_redact_patterns
	regex.match(p, "card 4111 1111 1111 1111 on file")
	regex.match(p, "card 4111-1111-1111-1111 on file")
	regex.match(p, "card 4111111111111111 on file")
	not regex.match(p, "ticket 12345 from 2026-11-25")
}

test_a_confidential_result_labels_the_flow_private if {
	d := result_of(["Customer notes (Confidential): ..."], null)
	d.allow == true
	d.obligations.labels == ["private"]
	d.obligations.redact.patterns == result_redact_patterns
}

test_a_marker_in_structured_content_counts_too if {
	d := result_of(["{}"], {"classification": "INTERNAL ONLY"})
	d.obligations.labels == ["private"]
}

test_a_private_key_is_withheld if {
	d := result_of(["here you go:\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn...\n"], null)
	d.allow == false
	d.reasons == ["the result of tickets__get_ticket carries a private key"]
	d.obligations == {}
}

test_other_actions_get_the_default_decision_unchanged if {
	call := object.union(result_input([], null), {"action": "tools/call"})
	d := decision_with_results with input as call
	d == decision with input as call
	d.allow == true
	listing := object.union(result_input([], null), {"action": "tools/list"})
	decision_with_results == decision with input as listing
}

test_a_result_input_without_content_still_decides if {
	d := decision_with_results with input as {"action": "tools/result", "principal": {"id": "x"}}
	d.allow == true
}
