# Helpers for the unit tests: build input documents in the DESIGN §5 shape.
package mcp_guard

import rego.v1

request(action, principal, roles, srv, name, args, annotations) := {
	"action": action,
	"principal": {"id": principal, "roles": roles, "attributes": {}},
	"session": {"id": "s1", "transport": "stdio", "client": {"name": "test", "version": "1"}},
	"server": srv,
	"tool": name,
	"arguments": args,
	"tool_info": {"annotations": annotations, "definition_sha256": "0000", "pinned": true, "suspicious": []},
	"context": {"time": "2026-01-01T00:00:00Z", "session_calls": 1, "secrets_seen": []},
}

call(principal, srv, name, args) := request("tools/call", principal, [], srv, name, args, {})

call_ro(principal, srv, name, args) := request("tools/call", principal, [], srv, name, args, {"readOnlyHint": true})

# A role-only principal (no entry in data principals), for testing one role at a time.
as_role(role, srv, name, args, annotations) := request("tools/call", "tester", [role], srv, name, args, annotations)

allowed(inp) if {
	d := decision with input as inp
	d.allow == true
}

denied_with(inp, fragment) if {
	d := decision with input as inp
	d.allow == false
	some r in d.reasons
	contains(r, fragment)
}

# input.context.urls as mcp-guard fills it (mcp_guard.urlhost, held to WHATWG by a corpus checked against Node),
# written out by hand for the URLs a test uses.
with_urls(inp, urls) := object.union(inp, {"context": object.union(inp.context, {"urls": urls})})

url_parse(scheme, host, userinfo) := {"scheme": scheme, "host": host, "port": null, "userinfo": userinfo}

https_at(host) := url_parse("https", host, false)
