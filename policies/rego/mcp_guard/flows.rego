# Session information flow: which calls label their flow, which calls are egress sinks, and the
# trifecta rule — after private data and untrusted input in one flow, nothing goes out.
#
# data: "flows": {
#   "labels": [{"server": "<glob>", "tools": ["<glob>"], "resources": [...], "prompts": [...],
#               "annotations": {"<hint>": <value>}, "labels": ["private"]}, ...],
#   "egress": [{"server": "<glob>", "tools": ["<glob>"], "annotations": {"openWorldHint": true},
#               "except_hosts": ["<host glob>"]}, ...],
#   "deny_egress_after": [["private", "untrusted"]]}
#
# A rule matches a request when its server glob (default "*") matches input.server, one of its globs
# for the action's kind (tools / resources / prompts) matches input.tool, and every annotation it
# names has exactly that value in input.tool_info.annotations (annotations are the upstream's hints;
# the lists are the operator's). An allowed call matched by "labels" rules carries
# obligations.labels (their union): mcp-guard adds them to the call's flow once the call is forwarded.
# A call matched by an "egress" rule is an egress sink (it can carry data out of mcp-guard's reach),
# unless that rule's "except_hosts" cover the host of every URL argument (urls.argument_names).
#
# mcp-guard fills input.context.flow for every call that reaches an upstream:
#   {"id", "labels": [names], "labeled_by": {label: {"decision_id", "server", "tool", "time"}},
#    "history": [{"server", "tool", "action", "decision", "labels", "decision_id", "time"}, ...]}
# "labeled_by" names the first call that added each label (it outlives the bounded history), so a deny
# can name the decision that tainted the flow. Listings have no flow, so a sink stays listed.
#
# Fail closed: a malformed "labels" rule (not an object, or labels not a list of strings) adds an
# invalid label, so mcp-guard refuses the call (obligation_invalid) rather than leaving a flow
# unlabelled; a malformed "deny_egress_after" is the default [["private", "untrusted"]], and a
# malformed entry of it denies egress.
package mcp_guard

import rego.v1

flow_config := c if {
	c := object.get(config, "flows", {})
	is_object(c)
} else := {}

# ---------------------------------------------------------------- labels

# The labels this call adds to its flow (null marks a malformed rule: an invalid obligation).
call_labels contains label if {
	not is_list_action
	some rule in array_or_empty(object.get(flow_config, "labels", []))
	flow_rule_matches(rule)
	some label in rule_labels(rule)
}

call_labels contains null if {
	not is_list_action
	some rule in array_or_empty(object.get(flow_config, "labels", []))
	not is_object(rule)
}

rule_labels(rule) := ls if {
	ls := object.get(rule, "labels", [])
	is_array(ls)
	every l in ls {
		is_string(l)
	}
} else := [null]

# The obligation, present only when the call adds some label (object.union with decision's others).
labels_obligation := {"labels": sort(call_labels)} if count(call_labels) > 0

else := {}

# ---------------------------------------------------------------- matching a rule

flow_rule_matches(rule) if {
	is_object(rule)
	glob_one(object.get(rule, "server", "*"), server)
	glob_any(object.get(rule, kind, []), tool)
	flow_annotations_match(object.get(rule, "annotations", {}))
}

flow_annotations_match(want) if {
	is_object(want)
	every hint, value in want {
		annotations[hint] == value
	}
}

# ---------------------------------------------------------------- egress sinks

flow_egress if {
	not is_list_action
	some rule in array_or_empty(object.get(flow_config, "egress", []))
	flow_rule_matches(rule)
	not egress_exempt(rule)
}

# Every URL argument of the call goes to a host the rule exempts (and there is at least one).
egress_exempt(rule) if {
	hosts := object.get(rule, "except_hosts", [])
	is_array(hosts)
	count(url_arguments) > 0
	every arg in url_arguments {
		url_host_exempt(arg[2], hosts)
	}
}

url_host_exempt(p, hosts) if {
	is_object(p)
	not url_failed(p)
	object.get(p, "userinfo", true) == false
	glob_any(hosts, url_host_of(p))
}

url_failed(p) if is_string(p.error)

# ---------------------------------------------------------------- the trifecta rule

# The flow is read field by field — its labels and who added each one — never as a whole: its history
# and id change with every call, and a decision cache keys a decision on everything the bundle reads
# (mcp_guard.policy.reads). A flow that is not an object, or has no list of labels, holds no labels.
flow_labels := {l | some l in array_or_empty(input.context.flow.labels); is_string(l)}

flow_deny_after := d if {
	d := object.get(flow_config, "deny_egress_after", null)
	is_array(d)
} else := [["private", "untrusted"]]

deny contains msg if {
	flow_egress
	some combo in flow_deny_after
	flow_holds_all(combo)
	msg := sprintf(
		"%s is an egress sink (it can send data out), and this flow holds %s; refused so that what the flow read cannot leak",
		[target, concat(" and ", [labeled_by_text(l) | some l in combo])],
	)
}

deny contains msg if {
	flow_egress
	some combo in flow_deny_after
	not valid_combo(combo)
	msg := sprintf("%s is an egress sink and flows.deny_egress_after has a malformed entry (a list of label names is expected); egress is refused until it is fixed", [target])
}

valid_combo(combo) if {
	is_array(combo)
	count(combo) > 0
	every l in combo {
		is_string(l)
	}
}

flow_holds_all(combo) if {
	valid_combo(combo)
	every l in combo {
		l in flow_labels
	}
}

# "'private' (decision <id>: tickets get_ticket)"
labeled_by_text(label) := sprintf("'%s' (decision %s: %s %s)", [label, o.decision_id, o.server, o.tool]) if {
	o := input.context.flow.labeled_by[label]
	is_string(o.decision_id)
	is_string(o.server)
	is_string(o.tool)
} else := sprintf("'%s'", [label])
