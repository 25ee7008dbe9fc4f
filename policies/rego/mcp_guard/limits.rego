# Rate limits: the "rate_limit" obligation of an allowed call, built from declarations in data.
#
# data: "limits": {"rate": [{"name": "tool_calls", "by": ["principal", "server", "tool"],
#                            "limit": 300, "window_s": 60, "actions": ["tools/call"],
#                            "servers": ["<glob>"], "tools": ["<glob>"]}]}
#
# Every declaration that applies to the request (its actions — default ["tools/call"] — and, when
# given, its server/tool globs) becomes one entry {"key", "limit", "window_s"} of
# obligations.rate_limit. The key is the declaration's name and the values of its "by" fields
# (principal id, server, tool) joined with "|", e.g. "tool_calls|alice|tickets|create_ticket". It
# never names the session: a new session does not reset a limit.
#
# mcp-guard counts allowed calls per key in a sliding window and denies with "rate_limited" (retry
# after N s) when a limit is full; before evaluation it fills input.context.usage[key] with the
# count of every declared key, so a rule can be tiered on it (see usage() below).
#
# A malformed declaration is not skipped: it becomes an entry with "key": null, which mcp-guard
# refuses as obligation_invalid, so a typo in data cannot lift a limit.
package mcp_guard

import rego.v1

rate_config := object.get(config, ["limits", "rate"], [])

rate_limits := [rate_entry(d) | some d in rate_config; rate_applies(d)] if is_array(rate_config)

else := [{"key": null, "limit": null, "window_s": null}]

# The obligation, present only when some limit applies (object.union with decision's other obligations).
rate_limit_obligation := {"rate_limit": rate_limits} if count(rate_limits) > 0

else := {}

rate_applies(d) if not is_object(d)

rate_applies(d) if {
	is_object(d)
	rate_filter(d, "actions", ["tools/call"], action)
	rate_filter(d, "servers", ["*"], server)
	rate_filter(d, "tools", ["*"], tool)
}

# A filter that is present but not a list applies everywhere (fail closed: the limit is kept).
rate_filter(d, field, default_value, value) if glob_any(object.get(d, field, default_value), value)

rate_filter(d, field, _, _) if not is_array(object.get(d, field, []))

rate_entry(d) := {
	"key": rate_key(d),
	"limit": object.get(d, "limit", null),
	"window_s": object.get(d, "window_s", null),
} if {
	is_object(d)
}

else := {"key": null, "limit": null, "window_s": null}

rate_key_fields := {"principal": principal_id, "server": server, "tool": tool}

rate_key(d) := concat("|", array.concat([d.name], parts)) if {
	is_string(d.name)
	by := object.get(d, "by", [])
	is_array(by)
	parts := [object.get(rate_key_fields, f, null) | some f in by]
	every p in parts {
		is_string(p)
	}
} else := null

# The count mcp-guard read for a declared key before this evaluation (0 when it has none).
usage(key) := n if {
	n := input.context.usage[key]
	is_number(n)
} else := 0
