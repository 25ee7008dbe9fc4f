# Argument rules: paths confined to allowed roots, URLs limited to allowed schemes and hosts, SQL
# limited to single read-only statements. They look at every string in input.arguments, however
# deeply nested; the argument's name is the nearest object key above the string.
package mcp_guard

import rego.v1

# [name, value] for every string in the arguments.
string_arguments contains [name, value] if {
	walk(arguments, [path, value])
	is_string(value)
	keys := [k | some k in path; is_string(k)]
	count(keys) > 0
	name := lower(keys[count(keys) - 1])
}

# Config of a server-keyed map ({"<server glob>": [values]}): the union for the current server.
server_values(m) := {v |
	is_object(m)
	some pattern, values in m
	glob.match(pattern, null, server)
	is_array(values)
	some v in values
}

# ---------------------------------------------------------------- paths

path_config := object.get(config, "paths", {})

is_path_argument(name) if glob_any(object.get(path_config, "argument_names", []), name)

is_path_argument(name) if name in server_values(object.get(path_config, "server_argument_names", {}))

allowed_roots := server_values(object.get(path_config, "allowed_roots", {})) if server

else := set()

deny contains msg if {
	some [name, value] in string_arguments
	is_path_argument(name)
	some problem in path_problems(value)
	msg := sprintf("argument '%s' of %s: %s", [name, target, problem])
}

normalised_path(value) := p if {
	v := replace(value, "\\", "/")
	p := trim_prefix(v, "file://")
}

path_problems(value) contains "path must not contain '..' segments" if {
	some segment in split(normalised_path(value), "/")
	segment == ".."
}

path_problems(value) contains msg if {
	not startswith(normalised_path(value), "/")
	msg := sprintf("'%s' is not an absolute path; use a path under %s", [value, roots_text])
}

path_problems(value) contains msg if {
	p := normalised_path(value)
	startswith(p, "/")
	not under_allowed_root(p)
	msg := sprintf("'%s' is outside the allowed roots (%s)", [value, roots_text])
}

under_allowed_root(p) if {
	some root in allowed_roots
	is_string(root)
	p == root
}

under_allowed_root(p) if {
	some root in allowed_roots
	is_string(root)
	startswith(p, concat("", [trim_suffix(root, "/"), "/"]))
}

roots_text := concat(", ", sort([r | some r in allowed_roots; is_string(r)])) if count(allowed_roots) > 0

else := "none are configured for this server"

# ---------------------------------------------------------------- URLs

url_config := object.get(config, "urls", {})

url_pattern := `^([a-zA-Z][a-zA-Z0-9+.-]*)://([^/?#]*)`

is_url_argument(name, _) if glob_any(object.get(url_config, "argument_names", []), name)

is_url_argument(_, value) if regex.match(url_pattern, value)

allowed_hosts := server_values(object.get(url_config, "allowed_hosts", {})) if server

else := set()

allowed_schemes := [lower(s) | some s in object.get(url_config, "schemes", ["https"]); is_string(s)]

deny contains msg if {
	some [name, value] in string_arguments
	is_url_argument(name, value)
	some problem in url_problems(value)
	msg := sprintf("argument '%s' of %s: %s", [name, target, problem])
}

url_parts(value) := parts if {
	matches := regex.find_all_string_submatch_n(url_pattern, value, 1)
	count(matches) == 1
	parts := {"scheme": lower(matches[0][1]), "authority": lower(matches[0][2])}
}

url_problems(value) contains msg if {
	not url_parts(value)
	msg := sprintf("'%s' is not an absolute URL (scheme://host/...)", [value])
}

url_problems(value) contains msg if {
	parts := url_parts(value)
	not parts.scheme in allowed_schemes
	msg := sprintf("scheme '%s' is not allowed (allowed: %s)", [parts.scheme, concat(", ", sort(allowed_schemes))])
}

url_problems(value) contains "URLs with credentials (user@host) are not allowed" if {
	contains(url_parts(value).authority, "@")
}

url_problems(value) contains msg if {
	parts := url_parts(value)
	not contains(parts.authority, "@")
	host := url_host(parts.authority)
	not host_allowed(host)
	msg := sprintf("host '%s' is not in the allowlist for %s", [host, server_name_text])
}

# The host of an authority: without the port; an IPv6 literal keeps its brackets.
url_host(authority) := authority if startswith(authority, "[")

else := split(authority, ":")[0]

host_allowed(host) if {
	some pattern in allowed_hosts
	is_string(pattern)
	glob.match(lower(pattern), null, host)
}

server_name_text := sprintf("server '%s'", [server]) if server

else := "this request"

# ---------------------------------------------------------------- SQL

sql_config := object.get(config, "sql", {})

sql_server if {
	server
	glob_any(object.get(sql_config, "servers", []), server)
}

sql_forbidden := [lower(k) | some k in object.get(sql_config, "forbidden_keywords", []); is_string(k)]

deny contains msg if {
	sql_server
	some [name, value] in string_arguments
	glob_any(object.get(sql_config, "argument_names", []), name)
	some problem in sql_problems(value)
	msg := sprintf("argument '%s' of %s: %s", [name, target, problem])
}

# The statement without surrounding whitespace and trailing semicolons.
sql_body(value) := trim_right(trim_space(value), "; \t\r\n")

sql_problems(value) contains "only a single SQL statement is allowed (found ';' between statements)" if {
	contains(sql_body(value), ";")
}

sql_problems(value) contains "only read-only queries are allowed: the statement must start with SELECT, WITH or EXPLAIN" if {
	not regex.match(`(?is)^\s*(select|with|explain)\b`, sql_body(value))
}

sql_problems(value) contains msg if {
	count(sql_forbidden) > 0
	pattern := sprintf(`(?i)\b(%s)\b`, [concat("|", sql_forbidden)])
	found := {lower(m[1]) | some m in regex.find_all_string_submatch_n(pattern, sql_body(value), -1)}
	count(found) > 0
	msg := sprintf(
		"only read-only queries are allowed: found %s",
		[concat(", ", [upper(w) | some w in sort([x | some x in found])])],
	)
}
