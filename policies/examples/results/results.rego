# An example result policy: drop this file into a copy of the default bundle (policies/rego/mcp_guard/)
# and point mcp-guard at the rule it defines:
#
#     [policy]
#     decision = "mcp_guard/decision_with_results"
#
# mcp-guard then asks about every tools/call result (this file mentions "tools/result", which is what turns
# the result policy on) with input.action == "tools/result" and
#     input.result = {"is_error": bool, "content": [{"type", "text", ...}], "structured_content": {...} | null,
#                     "truncated": bool}
# beside the call's principal, server, tool, arguments and context.flow. Every other action gets the default
# bundle's decision unchanged, so this file changes nothing but results.
#
# What it does with a result (edit the three lists below):
#   * withheld — a result carrying a private key block (result_withhold_markers);
#   * labelled — a result saying CONFIDENTIAL labels the flow "private" (result_label_markers), so the
#     default trifecta rule (flows.rego) treats the flow as holding private data from then on;
#   * redacted — card numbers (13 to 19 digits, spaces or dashes allowed between them) anywhere in the text
#     or structuredContent are replaced by "[redacted]" (result_redact_patterns).
# A result cut to [policy] result_max_bytes (input.result.truncated) is judged on what was seen; the
# redaction itself always runs over the whole result.
package mcp_guard

import rego.v1

decision_with_results := result_decision if input.action == "tools/result"

else := decision

# Markers that withhold a result (matched case-sensitively in its text).
result_withhold_markers := ["-----BEGIN RSA PRIVATE KEY-----", "-----BEGIN OPENSSH PRIVATE KEY-----", "-----BEGIN PRIVATE KEY-----"]

# Marker (upper-cased match) → the label a result carrying it adds to its flow.
result_label_markers := {"CONFIDENTIAL": "private", "INTERNAL ONLY": "private"}

# Regular expressions replaced in every result (mcp-guard refuses nested unbounded repetitions and
# backreferences: a pattern it refuses withholds the result as obligation_invalid).
result_redact_patterns := [`\b(?:[0-9][ -]?){12,18}[0-9]\b`]

result_decision := {"allow": false, "reasons": sort(result_withhold_reasons), "obligations": {}} if {
	count(result_withhold_reasons) > 0
} else := {"allow": true, "reasons": ["result allowed"], "obligations": result_obligations}

# All the text the policy was given: content blocks' text and structuredContent's JSON.
result_text := concat("\n", array.concat(
	[b.text | some b in array_or_empty(input.result.content); is_object(b); is_string(b.text)],
	[json.marshal(s) | s := input.result.structured_content; s != null],
))

# "tickets__get_ticket": the exposed tool name (target names a tool only for call and list actions).
result_target := concat(separator, [server, tool]) if {
	server
	tool
} else := "(no target)"

result_withhold_reasons contains sprintf("the result of %s carries a private key", [result_target]) if {
	some marker in result_withhold_markers
	contains(result_text, marker)
}

result_labels contains label if {
	upper_text := upper(result_text)
	some marker, label in result_label_markers
	contains(upper_text, marker)
}

result_obligations := object.union(
	{"redact": {"patterns": result_redact_patterns}},
	{"labels": sort(result_labels)},
) if {
	count(result_labels) > 0
}

else := {"redact": {"patterns": result_redact_patterns}}
