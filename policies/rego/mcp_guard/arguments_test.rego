package mcp_guard

import rego.v1

fs(principal, name, args) := request("tools/call", principal, [], "files", name, args, {"readOnlyHint": true})

# ---------------------------------------------------------------- string_arguments

test_string_arguments_walks_nested_values if {
	inp := call("x", "s", "t", {"a": "1", "b": {"C": ["2", {"d": "3"}]}, "n": 4})
	string_arguments == {["a", "1"], ["c", "2"], ["d", "3"]} with input as inp
}

# A call within its roots, asked again with the client's answers to the upstream's questions.
fs_answered(answers) := object.union(fs("bob", "read_text_file", {"path": "/srv/agent-workspace/a.txt"}), {"input_responses": answers})

test_an_accepted_forms_fields_are_checked_as_arguments if {
	allowed(fs_answered({"file": {"action": "accept", "content": {"path": "/srv/agent-workspace/b.txt"}}}))
	denied_with(fs_answered({"file": {"action": "accept", "content": {"path": "/etc/shadow"}}}), "'/etc/shadow' is outside the allowed roots")

	# a declined form has no content to check; a sampling or roots answer is no form
	allowed(fs_answered({"file": {"action": "decline"}}))
	allowed(fs_answered({"s": {"role": "assistant", "content": {"type": "text", "text": "/etc/shadow"}, "model": "m"}}))
}

test_non_object_arguments_are_empty if {
	count(string_arguments) == 0 with input as object.union(call("x", "s", "t", {}), {"arguments": "path=/etc/passwd"})
}

# ---------------------------------------------------------------- paths

test_path_under_root_allowed if {
	allowed(fs("bob", "read_text_file", {"path": "/srv/agent-workspace/notes/a.txt"}))
	allowed(fs("bob", "list_directory", {"path": "/srv/agent-workspace"}))
	allowed(fs("bob", "list_directory", {"path": "/srv/agent-workspace/"}))
}

test_path_dotdot_denied if {
	denied_with(fs("bob", "read_text_file", {"path": "/srv/agent-workspace/../../etc/passwd"}), "path must not contain '..' segments")
	denied_with(fs("bob", "read_text_file", {"path": "/srv/agent-workspace/..\\..\\etc"}), "'..' segments")
}

test_dotdot_inside_a_name_is_fine if {
	allowed(fs("bob", "read_text_file", {"path": "/srv/agent-workspace/a..b.txt"}))
}

test_path_outside_roots_denied if {
	denied_with(fs("bob", "read_text_file", {"path": "/etc/passwd"}), "'/etc/passwd' is outside the allowed roots (/srv/agent-workspace, /tmp/mcp-guard-demo/files)")

	# a sibling directory that shares the root's prefix is outside
	denied_with(fs("bob", "read_text_file", {"path": "/srv/agent-workspace-evil/x"}), "outside the allowed roots")
}

test_relative_path_denied if {
	denied_with(fs("bob", "read_text_file", {"path": "notes/a.txt"}), "is not an absolute path")
	denied_with(fs("bob", "read_text_file", {"path": "~/.ssh/id_rsa"}), "is not an absolute path")
}

test_nul_byte_denied if {
	denied_with(fs("bob", "read_text_file", {"path": "/srv/agent-workspace/a\u0000.txt"}), "NUL bytes")
}

test_file_uri_path_checked if {
	allowed(fs("bob", "read_text_file", {"path": "file:///srv/agent-workspace/a.txt"}))
	denied_with(fs("bob", "read_text_file", {"path": "file:///etc/shadow"}), "outside the allowed roots")
}

test_every_path_in_a_list_checked if {
	denied_with(
		fs("bob", "read_multiple_files", {"paths": ["/srv/agent-workspace/a", "/root/.bashrc"]}),
		"argument 'paths' of files__read_multiple_files: '/root/.bashrc' is outside",
	)
}

test_move_source_and_destination_checked if {
	inp := request("tools/call", "local-agent", [], "files", "move_file", {"source": "/srv/agent-workspace/a", "destination": "/tmp/x"}, {"destructiveHint": true})
	denied_with(inp, "argument 'destination'")
}

test_server_without_roots_accepts_no_paths if {
	denied_with(call("local-agent", "everything", "echo", {"path": "/srv/agent-workspace/a"}), "none are configured for this server")
}

test_server_argument_names if {
	cfg := object.union(data.mcp_guard_config, {"paths": {"server_argument_names": {"notes": ["file"]}, "allowed_roots": {"notes": ["/n"]}}, "roles": {"r": {"grants": [{"server": "*", "tools": ["*"]}]}}})
	denied_with(as_role("r", "notes", "open", {"file": "/etc/x"}, {}), "argument 'file'") with data.mcp_guard_config as cfg
	allowed(as_role("r", "notes", "open", {"file": "/n/x"}, {})) with data.mcp_guard_config as cfg
	allowed(as_role("r", "other", "open", {"file": "/etc/x"}, {})) with data.mcp_guard_config as cfg
}

test_git_repo_path_confined if {
	allowed(call_ro("local-agent", "git", "git_status", {"repo_path": "/srv/repos/app"}))
	denied_with(call_ro("local-agent", "git", "git_status", {"repo_path": "/home/other/repo"}), "argument 'repo_path'")
}

# ---------------------------------------------------------------- URLs

fetch(principal, url) := request("tools/call", principal, [], "fetch", "fetch", {"url": url}, {"readOnlyHint": true})

# A fetch call with the URL's parse in context.urls.
fetch_parsed(url, parse) := with_urls(fetch("alice", url), {url: parse})

test_url_allowlisted_host if {
	allowed(fetch_parsed("https://docs.python.org/3/library/json.html", https_at("docs.python.org")))
	allowed(fetch_parsed("https://en.wikipedia.org/wiki/Rego", https_at("en.wikipedia.org")))
	allowed(fetch_parsed("https://EXAMPLE.com:443/x?y=1#z", https_at("example.com")))
}

test_url_host_not_allowlisted if {
	denied_with(fetch_parsed("https://evil.example.net/", https_at("evil.example.net")), "host 'evil.example.net' is not in the allowlist for server 'fetch'")
	denied_with(fetch_parsed("https://example.com.evil.net/", https_at("example.com.evil.net")), "host 'example.com.evil.net'")
	denied_with(fetch_parsed("https://169.254.169.254/latest/meta-data", https_at("169.254.169.254")), "host '169.254.169.254'")
	denied_with(fetch_parsed("https://[::1]:8080/", https_at("[::1]")), "host '[::1]'")
}

# The host is the parser's, never the text's: a WHATWG parser reads this as 169.254.169.254.
test_url_host_is_read_from_the_parse_not_the_text if {
	url := "https://169.254.169.254\\.example.com/"
	denied_with(fetch_parsed(url, https_at("169.254.169.254")), "host '169.254.169.254'")
	denied_with(fetch_parsed("https://0x7f.1/", https_at("127.0.0.1")), "host '127.0.0.1'")
}

test_url_scheme_must_be_https if {
	denied_with(fetch_parsed("http://docs.python.org/", url_parse("http", "docs.python.org", false)), "scheme 'http' is not allowed (allowed: https)")
	denied_with(fetch_parsed("file:///etc/passwd", url_parse("file", "", false)), "scheme 'file' is not allowed")
}

test_url_credentials_denied if {
	denied_with(fetch_parsed("https://user:pw@docs.python.org/", url_parse("https", "docs.python.org", true)), "URLs with credentials")
	denied_with(fetch_parsed("https://docs.python.org@evil.net/", url_parse("https", "evil.net", true)), "URLs with credentials")
}

test_url_must_be_absolute if {
	denied_with(fetch("alice", "//evil.net/x"), "is not an absolute URL")
	denied_with(fetch("alice", "docs.python.org"), "is not an absolute URL")

	# a URL the proxy did not parse (an input built by hand) is never trusted
	denied_with(fetch("alice", "https://docs.python.org/"), "is not an absolute URL")
}

test_url_parse_failures_and_missing_hosts_are_denied if {
	bad := object.union(url_parse("https", null, false), {"error": "IPv4 address out of range"})
	denied_with(fetch_parsed("https://256.1.1.1/", bad), "is not a valid URL: IPv4 address out of range")
	denied_with(fetch_parsed("https:///", url_parse("https", "", false)), "has no host")
	denied_with(fetch_parsed("https://x/", {"scheme": "https", "host": "docs.python.org"}), "URLs with credentials")
}

test_url_rules_apply_to_url_named_arguments_only if {
	allowed(call("alice", "tickets", "create_ticket", {"title": "see", "body": "https://evil.net/"}))
	denied_with(call("alice", "tickets", "create_ticket", {"title": "t", "url": "https://evil.net/"}), "argument 'url'")
}

test_url_host_globs if {
	host_allowed("a.example.com") with input as fetch("alice", "https://a.example.com/")
	host_allowed("a.b.example.com") with input as fetch("alice", "https://a.b.example.com/")
	not host_allowed("badexample.com") with input as fetch("alice", "https://badexample.com/")
}

# ---------------------------------------------------------------- SQL

sql(q) := call_ro("bob", "warehouse", "query", {"sql": q})

test_sql_read_only_allowed if {
	allowed(sql("SELECT region, count(*) FROM orders GROUP BY region"))
	allowed(sql("  with t as (select 1 as x) select x from t;  "))
	allowed(sql("EXPLAIN QUERY PLAN SELECT * FROM orders"))
	allowed(sql("SELECT updated_at, created_by FROM orders"))
}

test_sql_writes_denied if {
	denied_with(sql("DELETE FROM orders"), "found DELETE")
	denied_with(sql("VALUES (1)"), "must start with SELECT, WITH or EXPLAIN")
	denied_with(sql("update orders set x = 1"), "found UPDATE")
	denied_with(sql("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d"), "found DELETE")
	denied_with(sql("SELECT * INTO backup FROM orders"), "found INTO")
	denied_with(sql("select 1; attach database 'x' as y"), "found ATTACH")
	denied_with(sql("PRAGMA table_info(orders)"), "found PRAGMA")
}

# One reason per problem: a DELETE is refused once, naming DELETE, not a second time for how it starts.
test_sql_reason_stated_once if {
	d := decision with input as sql("DELETE FROM orders")
	d.reasons == ["argument 'sql' of warehouse__query: only read-only queries are allowed: found DELETE"]
}

test_sql_single_statement if {
	denied_with(sql("SELECT 1; SELECT 2"), "only a single SQL statement is allowed")
	allowed(sql("SELECT 1;"))
}

test_sql_rules_only_on_sql_servers if {
	allowed(call("alice", "tickets", "search_tickets", {"query": "drop table"}))
}

test_sql_other_argument_names if {
	denied_with(call_ro("bob", "warehouse", "query", {"statement": "drop table x"}), "argument 'statement'")
}
