# Argument rules: paths confined to allowed roots, URLs limited to allowed schemes and hosts, SQL
# limited to single read-only statements. They look at every string in input.arguments however deeply
# nested; an argument's name is the nearest object key above the string (so every element of
# "paths": [...] is checked as "paths"). The forms a client filled in during the call, when an upstream
# asked (input.input_responses, see answered_forms), are checked the same way: a path typed into a
# form is a path.
package mcp_guard

import rego.v1

# [name, value] for every string in the arguments, however deeply nested.
#
# Every local variable of this bundle is declared (`some`, `:=`, `some ... in`): an undeclared one
# in an output position, like walk's [path, leaf], would silently become a reference to any rule or
# function of the same name added to the package later, switching this rule off. mcp-guard's load-time
# check rejects such a collision, and tests/policy/test_lint.py keeps this bundle fully declared.
string_arguments contains pair if {
	some pair in named_strings(arguments)
}

# An accepted form's fields count as arguments of the call they were asked for.
string_arguments contains pair if {
	some content in answered_forms
	some pair in named_strings(content)
}

named_strings(doc) := {[name, leaf] |
	some path, leaf
	walk(doc, [path, leaf])
	is_string(leaf)
	keys := [k | some k in path; is_string(k)]
	count(keys) > 0
	name := lower(keys[count(keys) - 1])
}

# All argument problems, as deny messages. Evaluated only when some argument is a string: this keeps
# the common case (ids, numbers, no arguments) cheap.
deny contains msg if {
	count(string_arguments) > 0
	some msg in argument_denies
}

argument_denies contains msg if {
	some [name, _, problem] in path_problem
	msg := sprintf("argument '%s' of %s: %s", [name, target, problem])
}

argument_denies contains msg if {
	some [name, _, problem] in url_problem
	msg := sprintf("argument '%s' of %s: %s", [name, target, problem])
}

argument_denies contains msg if {
	some [name, _, problem] in sql_problem
	msg := sprintf("argument '%s' of %s: %s", [name, target, problem])
}

# The union of a server-keyed map ({"<server glob>": [values]}) for the current server.
server_values(m) := {v |
	is_object(m)
	some pattern, values in m
	glob_one(pattern, server)
	is_array(values)
	some v in values
}

# ---------------------------------------------------------------- paths
#
# "paths": {"argument_names": [names, any server], "server_argument_names": {"<server glob>": [names]},
#           "allowed_roots": {"<server glob>": ["/abs/root", ...]}}
# A path argument must be absolute, must not contain a ".." segment or a NUL byte, and must lie under
# one of the server's allowed roots. A server without roots accepts no path arguments at all.

path_config := object.get(config, "paths", {})

# Argument names (lower case) that hold paths on this server.
path_names := {lower(n) | some n in object.get(path_config, "argument_names", []); is_string(n)} | {lower(n) |
	some n in server_values(object.get(path_config, "server_argument_names", {}))
	is_string(n)
}

# [name, value, path]: the path with backslashes as separators and without a file:// prefix.
path_arguments contains [name, value, replace(trim_prefix(value, "file://"), "\\", "/")] if {
	some [name, value] in string_arguments
	name in path_names
}

allowed_roots := {trim_suffix(r, "/") | some r in server_values(object.get(path_config, "allowed_roots", {})); is_string(r)}

path_problem contains [name, value, "path must not contain '..' segments"] if {
	some [name, value, p] in path_arguments
	".." in split(p, "/")
}

path_problem contains [name, value, "path must not contain NUL bytes"] if {
	some [name, value, _] in path_arguments
	contains(value, "\u0000")
}

path_problem contains [name, value, msg] if {
	some [name, value, p] in path_arguments
	not under_allowed_root(p)
	msg := path_outside_message(value, p)
}

under_allowed_root(p) if p in allowed_roots

else if {
	some root in allowed_roots
	startswith(p, concat("", [root, "/"]))
}

path_outside_message(value, p) := sprintf("'%s' is not an absolute path; use a path under %s", [value, roots_text]) if {
	not startswith(p, "/")
} else := sprintf("'%s' is outside the allowed roots (%s)", [value, roots_text])

roots_text := concat(", ", sort(allowed_roots)) if count(allowed_roots) > 0

else := "none are configured for this server"

# ---------------------------------------------------------------- URLs
#
# "urls": {"argument_names": [names], "schemes": ["https"], "allowed_hosts": {"<server glob>": [host globs]}}
# A URL argument must be an absolute URL with an allowed scheme, no user@ part, and a host matching
# one of the server's host globs ("*.example.com" matches any subdomain, not example.com itself).
#
# Hosts are never read from the text here: mcp-guard parses every URL-looking string argument the way
# WHATWG URL parsers (browsers, Node's fetch) do and puts the result in input.context.urls
# ({"<value>": {"scheme", "host", "port", "userinfo"[, "error"]}}; hosts lower-case, IPv4 dotted decimal,
# IPv6 in brackets). A regular expression would read "https://169.254.169.254\.example.com/" as a
# subdomain of example.com; the upstream's HTTP client reads 169.254.169.254. A URL argument with no entry
# (an input built without mcp-guard) is denied.

url_config := object.get(config, "urls", {})

allowed_hosts := {lower(h) | some h in server_values(object.get(url_config, "allowed_hosts", {})); is_string(h)}

allowed_schemes := {lower(s) | some s in object.get(url_config, "schemes", ["https"]); is_string(s)}

url_names := {lower(n) | some n in object.get(url_config, "argument_names", []); is_string(n)}

# [name, value, parse]: the parse is the proxy's entry for the value, or null when there is none.
url_arguments contains [name, value, parsed_url(value)] if {
	some [name, value] in string_arguments
	name in url_names
}

parsed_url(value) := p if {
	p := input.context.urls[value]
	is_object(p)
} else := null

url_problem contains [name, value, msg] if {
	some [name, value, p] in url_arguments
	msg := url_problem_of(value, p)
}

# The first problem of one URL; undefined when the URL is acceptable.
url_problem_of(value, p) := sprintf("'%s' is not an absolute URL (scheme://host/...)", [value]) if {
	not is_object(p)
} else := sprintf("'%s' is not a valid URL: %s", [value, p.error]) if {
	is_string(p.error)
} else := msg if {
	scheme := object.get(p, "scheme", "")
	not scheme in allowed_schemes
	msg := sprintf("scheme '%v' is not allowed (allowed: %s)", [scheme, concat(", ", sort(allowed_schemes))])
} else := "URLs with credentials (user@host) are not allowed" if {
	object.get(p, "userinfo", true) != false
} else := sprintf("'%s' has no host", [value]) if {
	not url_host_of(p)
} else := msg if {
	not host_allowed(p.host)
	msg := sprintf("host '%s' is not in the allowlist for server '%s'", [p.host, server])
}

# The parsed host of a URL entry, when it has a non-empty one.
url_host_of(p) := p.host if {
	is_string(p.host)
	p.host != ""
}

host_allowed(host) if host in allowed_hosts

else if {
	some pattern in allowed_hosts
	glob.match(pattern, null, host)
}

# ---------------------------------------------------------------- SQL
#
# "sql": {"servers": [globs], "argument_names": [names], "forbidden_keywords": [words]}
# On those servers a SQL argument must be one statement that starts with SELECT, WITH or EXPLAIN and
# contains none of the forbidden keywords as a word (so WITH ... DELETE and SELECT ... INTO are
# refused too). Conservative on purpose: a forbidden word inside a string literal is refused as well.
# Each problem is stated once: a statement with forbidden keywords is refused naming them (which says
# why a DELETE is not read-only); "must start with ..." is the reason only when none was found.

sql_config := object.get(config, "sql", {})

sql_server if glob_any(object.get(sql_config, "servers", []), server)

sql_forbidden := {lower(k) | some k in object.get(sql_config, "forbidden_keywords", []); is_string(k)}

sql_names := {lower(n) | some n in object.get(sql_config, "argument_names", []); is_string(n)}

# [name, value, statement, words]: the statement is the value without surrounding whitespace and
# trailing semicolons; its words are its runs of ASCII letters, digits and underscores (what a regex
# \b...\b delimits), split once here rather than matched keyword by keyword.
sql_arguments contains [name, value, statement, regex.split(`[^A-Za-z0-9_]+`, statement)] if {
	some [name, value] in string_arguments
	name in sql_names
	sql_server
	statement := trim_right(trim_space(value), "; \t\r\n")
}

sql_problem contains [name, value, "only a single SQL statement is allowed (found ';' between statements)"] if {
	some [name, value, statement, _] in sql_arguments
	contains(statement, ";")
}

sql_problem contains [name, value, msg] if {
	some [name, value, _, words] in sql_arguments
	count(sql_keywords_found(words)) == 0
	not lower(words[0]) in {"select", "with", "explain"}
	msg := "only read-only queries are allowed: the statement must start with SELECT, WITH or EXPLAIN"
}

sql_problem contains [name, value, msg] if {
	some [name, value, _, words] in sql_arguments
	found := sql_keywords_found(words)
	count(found) > 0
	msg := sprintf("only read-only queries are allowed: found %s", [concat(", ", sort(found))])
}

# The forbidden keywords among a statement's words, upper case.
sql_keywords_found(words) := {upper(w) | some w in words; lower(w) in sql_forbidden}
