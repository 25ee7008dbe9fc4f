# Argument rules: paths confined to allowed roots, URLs limited to allowed schemes and hosts, SQL
# limited to single read-only statements. They look at every string in input.arguments however deeply
# nested; an argument's name is the nearest object key above the string (so every element of
# "paths": [...] is checked as "paths").
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

# The union of a server-keyed map ({"<server glob>": [values]}) for the current server.
server_values(m) := {v |
	is_object(m)
	some pattern, values in m
	glob.match(pattern, null, server)
	is_array(values)
	some v in values
}

# ---------------------------------------------------------------- paths
#
# "paths": {"argument_names": [globs, any server], "server_argument_names": {"<server glob>": [names]},
#           "allowed_roots": {"<server glob>": ["/abs/root", ...]}}
# A path argument must be absolute, must not contain a ".." segment or a NUL byte, and must lie under
# one of the server's allowed roots. A server without roots accepts no path arguments at all.

path_config := object.get(config, "paths", {})

is_path_argument(name) if glob_any(object.get(path_config, "argument_names", []), name)

is_path_argument(name) if name in server_values(object.get(path_config, "server_argument_names", {}))

allowed_roots := {r | some r in server_values(object.get(path_config, "allowed_roots", {})); is_string(r)}

path_problem contains [name, value, "path must not contain '..' segments"] if {
	some [name, value] in string_arguments
	is_path_argument(name)
	".." in split(normalised_path(value), "/")
}

path_problem contains [name, value, "path must not contain NUL bytes"] if {
	some [name, value] in string_arguments
	is_path_argument(name)
	contains(value, "\u0000")
}

path_problem contains [name, value, msg] if {
	some [name, value] in string_arguments
	is_path_argument(name)
	not startswith(normalised_path(value), "/")
	msg := sprintf("'%s' is not an absolute path; use a path under %s", [value, roots_text])
}

path_problem contains [name, value, msg] if {
	some [name, value] in string_arguments
	is_path_argument(name)
	p := normalised_path(value)
	startswith(p, "/")
	not under_allowed_root(p)
	msg := sprintf("'%s' is outside the allowed roots (%s)", [value, roots_text])
}

deny contains msg if {
	some [name, _, problem] in path_problem
	msg := sprintf("argument '%s' of %s: %s", [name, target, problem])
}

# Backslashes count as separators, and a file:// URI is judged by its path.
normalised_path(value) := trim_prefix(replace(value, "\\", "/"), "file://")

under_allowed_root(p) if {
	some root in allowed_roots
	p == trim_suffix(root, "/")
}

under_allowed_root(p) if {
	some root in allowed_roots
	startswith(p, concat("", [trim_suffix(root, "/"), "/"]))
}

roots_text := concat(", ", sort(allowed_roots)) if count(allowed_roots) > 0

else := "none are configured for this server"

# ---------------------------------------------------------------- URLs
#
# "urls": {"argument_names": [globs], "schemes": ["https"], "allowed_hosts": {"<server glob>": [host globs]}}
# A URL argument must be an absolute URL with an allowed scheme, no user@ part, and a host matching
# one of the server's host globs ("*.example.com" matches any subdomain, not example.com itself).

url_config := object.get(config, "urls", {})

url_pattern := `^([a-zA-Z][a-zA-Z0-9+.-]*)://([^/?#]*)`

allowed_hosts := {lower(h) | some h in server_values(object.get(url_config, "allowed_hosts", {})); is_string(h)}

allowed_schemes := {lower(s) | some s in object.get(url_config, "schemes", ["https"]); is_string(s)}

url_argument(name) if glob_any(object.get(url_config, "argument_names", []), name)

url_parts(value) := {"scheme": lower(m[0][1]), "authority": lower(m[0][2])} if {
	m := regex.find_all_string_submatch_n(url_pattern, value, 1)
	count(m) == 1
}

url_problem contains [name, value, msg] if {
	some [name, value] in string_arguments
	url_argument(name)
	not url_parts(value)
	msg := sprintf("'%s' is not an absolute URL (scheme://host/...)", [value])
}

url_problem contains [name, value, msg] if {
	some [name, value] in string_arguments
	url_argument(name)
	parts := url_parts(value)
	scheme := parts.scheme
	not scheme in allowed_schemes
	msg := sprintf("scheme '%s' is not allowed (allowed: %s)", [scheme, concat(", ", sort(allowed_schemes))])
}

url_problem contains [name, value, "URLs with credentials (user@host) are not allowed"] if {
	some [name, value] in string_arguments
	url_argument(name)
	parts := url_parts(value)
	contains(parts.authority, "@")
}

url_problem contains [name, value, msg] if {
	some [name, value] in string_arguments
	url_argument(name)
	parts := url_parts(value)
	authority := parts.authority
	not contains(authority, "@")
	host := url_host(authority)
	not host_allowed(host)
	msg := sprintf("host '%s' is not in the allowlist for server '%s'", [host, server])
}

deny contains msg if {
	some [name, _, problem] in url_problem
	msg := sprintf("argument '%s' of %s: %s", [name, target, problem])
}

# The host of an authority, without the port; an IPv6 literal keeps its brackets.
url_host(authority) := h if {
	startswith(authority, "[")
	parts := split(authority, "]")
	h := concat("", [parts[0], "]"])
} else := h if {
	parts := split(authority, ":")
	h := parts[0]
}

host_allowed(host) if {
	some pattern in allowed_hosts
	glob.match(pattern, null, host)
}

# ---------------------------------------------------------------- SQL
#
# "sql": {"servers": [globs], "argument_names": [globs], "forbidden_keywords": [words]}
# On those servers a SQL argument must be one statement that starts with SELECT, WITH or EXPLAIN and
# contains none of the forbidden keywords as a word (so WITH ... DELETE and SELECT ... INTO are
# refused too). Conservative on purpose: a forbidden word inside a string literal is refused as well.

sql_config := object.get(config, "sql", {})

sql_server if glob_any(object.get(sql_config, "servers", []), server)

sql_forbidden := {lower(k) | some k in object.get(sql_config, "forbidden_keywords", []); is_string(k); regex.match(`^[A-Za-z_]+$`, k)}

# The statement without surrounding whitespace and trailing semicolons.
sql_body(value) := trim_right(trim_space(value), "; \t\r\n")

sql_argument(name) if {
	sql_server
	glob_any(object.get(sql_config, "argument_names", []), name)
}

sql_problem contains [name, value, "only a single SQL statement is allowed (found ';' between statements)"] if {
	some [name, value] in string_arguments
	sql_argument(name)
	contains(sql_body(value), ";")
}

sql_problem contains [name, value, msg] if {
	some [name, value] in string_arguments
	sql_argument(name)
	not regex.match(`(?is)^(select|with|explain)\b`, sql_body(value))
	msg := "only read-only queries are allowed: the statement must start with SELECT, WITH or EXPLAIN"
}

sql_problem contains [name, value, msg] if {
	some [name, value] in string_arguments
	sql_argument(name)
	count(sql_forbidden) > 0
	pattern := sprintf(`(?i)\b(%s)\b`, [concat("|", sort(sql_forbidden))])
	found := {lower(m[1]) | some m in regex.find_all_string_submatch_n(pattern, sql_body(value), -1)}
	count(found) > 0
	msg := sprintf("only read-only queries are allowed: found %s", [concat(", ", sort({upper(w) | some w in found}))])
}

deny contains msg if {
	some [name, _, problem] in sql_problem
	msg := sprintf("argument '%s' of %s: %s", [name, target, problem])
}
