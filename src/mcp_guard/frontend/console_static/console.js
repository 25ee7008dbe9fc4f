// The mcp-guard console: one hand-written ES module, no build step, no dependency.
// Everything shown comes from the admin API (/admin/api/...) and is written with textContent, never as HTML:
// arguments, reasons and tool definitions are chosen by clients and upstreams.

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Nodes out of a mix of nodes, arrays of them, nulls and texts (for replaceChildren).
const nodes = (...items) => el("div", {}, ...items).childNodes;

let session = null; // {principal, roles, can_act, csrf_token, csrf_header}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, body) {
  const headers = { Accept: "application/json" };
  const init = { method: "GET", headers, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    headers[session.csrf_header] = session.csrf_token;
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    location.assign("/console/login?e=expired");
    throw new ApiError(401, "not logged in");
  }
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, (data && data.error) || response.statusText);
  return data;
}

function showError(error) {
  const box = $("#error");
  box.textContent = error ? `⚠ ${error.message || error}` : "";
  box.hidden = !error;
}

const short = (hash, n = 12) => (hash ? String(hash).slice(0, n) + "…" : "—");
const json = (value) => JSON.stringify(value, null, 2);
const when = (ts) => (ts ? String(ts).replace("T", " ").slice(0, 23) : "—");

// ------------------------------------------------------------------------------------------- verdicts
// Never colour alone: an icon and a word for each.
const ALERTS = { "policy.reload_failed": "REJECTED", "tool.pin_changed": "CHANGED" };
const FAILURES = new Set(["call.error", "upstream.crash", "upstream.start_failed"]);

function verdict(event) {
  if (ALERTS[event.kind]) return { text: `⚠ ${ALERTS[event.kind]}`, cls: "v-alert" };
  if (event.decision === "allow") return { text: "✔ ALLOW", cls: "v-allow" };
  if (event.decision === "deny") return { text: "✖ DENY", cls: "v-deny" };
  if (FAILURES.has(event.kind)) return { text: "✖ ERROR", cls: "v-error" };
  if (event.kind === "call.result") {
    const failed = event.result && event.result.is_error;
    return failed ? { text: "✖ ERROR", cls: "v-error" } : { text: "✔ OK", cls: "v-ok" };
  }
  return { text: "·", cls: "" };
}

const reasonsOf = (event) => (Array.isArray(event.reasons) ? event.reasons.join("; ") : event.reasons || "");
const target = (event) => [event.server, event.tool].filter(Boolean).join("/");

// ------------------------------------------------------------------------------------------- live decisions
const MAX_ROWS = 500;
let stream = null;

function startStream() {
  if (stream) stream.close();
  $("#events tbody").replaceChildren();
  const params = new URLSearchParams();
  for (const [key, value] of new FormData($("#filters"))) if (String(value).trim()) params.set(key, String(value).trim());
  const state = $("#stream-state");
  state.textContent = "connecting…";
  stream = new EventSource(`/admin/api/events?${params}`);
  stream.onopen = () => (state.textContent = "● live");
  stream.onerror = () => (state.textContent = "○ reconnecting…");
  stream.addEventListener("problem", (message) => {
    state.textContent = `⚠ ${JSON.parse(message.data).error}`;
  });
  stream.addEventListener("audit", (message) => addEvent(JSON.parse(message.data)));
}

function addEvent(event) {
  const v = verdict(event);
  const row = el(
    "tr",
    { class: "event", tabindex: 0, "data-seq": event.seq, "data-kind": event.kind, "aria-selected": "false" },
    el("td", { class: "mono" }, when(event.ts)),
    el("td", { class: "mono" }, `#${event.seq}`),
    el("td", {}, event.kind),
    el("td", { class: `verdict ${v.cls}` }, v.text),
    el("td", {}, event.principal || "—"),
    el("td", {}, target(event) || "—"),
    el("td", { class: "reasons", title: reasonsOf(event) }, reasonsOf(event)),
  );
  const open = () => showEvent(event.seq, row);
  row.addEventListener("click", open);
  row.addEventListener("keydown", (key) => {
    if (key.key === "Enter" || key.key === " ") {
      key.preventDefault();
      open();
    }
  });
  const body = $("#events tbody");
  body.prepend(row);
  while (body.rows.length > MAX_ROWS) body.lastElementChild.remove();
}

function field(name, value) {
  return [el("dt", {}, name), el("dd", {}, value === null || value === undefined || value === "" ? "—" : value)];
}

async function showEvent(seq, row) {
  for (const selected of document.querySelectorAll('#events tr[aria-selected="true"]')) selected.setAttribute("aria-selected", "false");
  if (row) row.setAttribute("aria-selected", "true");
  const detail = $("#detail");
  try {
    const { event, linked, linked_window } = await api(`/admin/api/events/${seq}`);
    const v = verdict(event);
    detail.replaceChildren(...nodes(
      el("h3", {}, `Event #${event.seq} — ${event.kind}`),
      el(
        "dl",
        {},
        field("Verdict", el("span", { class: `verdict ${v.cls}` }, v.text)),
        field("Time", when(event.ts)),
        field("Principal", event.principal),
        field("Server/tool", target(event)),
        field("Decision id", event.decision_id),
        field("Policy revision", event.policy_revision),
        field("Session", event.session_id),
        field("Duration", event.duration_ms === null || event.duration_ms === undefined ? null : `${event.duration_ms} ms`),
        field("Hash", short(event.hash, 16)),
      ),
      el("h4", {}, "Reasons"),
      Array.isArray(event.reasons) && event.reasons.length
        ? el("ul", { class: "reasons-list" }, event.reasons.map((r) => el("li", {}, r)))
        : el("p", { class: "hint" }, "none"),
      el("h4", {}, "Arguments (audit copy: secrets scrubbed)"),
      el("pre", { class: "arguments" }, json(event.arguments ?? null)),
      event.result !== null && event.result !== undefined ? [el("h4", {}, "Result"), el("pre", {}, json(event.result))] : null,
      event.details ? [el("h4", {}, "Details"), el("pre", {}, json(event.details))] : null,
      el("h4", {}, `Linked rows (same decision id, within ${linked_window} rows)`),
      linked.length
        ? el(
            "ul",
            { class: "linked" },
            linked.map((other) =>
              el("li", {}, el("button", { type: "button", onclick: () => showEvent(other.seq) }, `#${other.seq} ${other.kind} ${verdict(other).text}`)),
            ),
          )
        : el("p", { class: "hint" }, "none"),
    ));
    showError(null);
  } catch (error) {
    detail.replaceChildren(el("p", { class: "error" }, `⚠ ${error.message}`));
  }
}

async function refreshChain() {
  const line = $("#chain");
  try {
    const chain = await api("/admin/api/chain");
    if (chain.ok) {
      line.className = "chain v-ok";
      line.textContent = `✔ Chain verified: ${chain.rows} rows, head #${chain.head_seq ?? 0} ${short(chain.head_hash, 16)}`;
    } else {
      line.className = "chain v-deny";
      line.textContent = `✖ Chain BROKEN at #${chain.bad_seq}: ${chain.problem} (good up to #${chain.last_good_seq ?? 0})`;
    }
    if (chain.warnings.length) line.textContent += ` ⚠ ${chain.warnings.join("; ")}`;
  } catch (error) {
    line.className = "chain v-alert";
    line.textContent = `⚠ Chain not checked: ${error.message}`;
  }
}

// ------------------------------------------------------------------------------------------- approvals
const approvalCards = new Map(); // id -> {card, approval}

function timeLeft(expiresAt) {
  const seconds = Math.max(0, Math.round((Date.parse(expiresAt) - Date.now()) / 1000));
  if (seconds === 0) return "expired";
  const m = Math.floor(seconds / 60);
  return m ? `${m} min ${seconds % 60} s` : `${seconds} s`;
}

function approvalCard(a) {
  const comment = el("input", { type: "text", maxlength: 2000, placeholder: "comment (optional)", "aria-label": `Comment on ${a.server}/${a.tool}` });
  const outcome = el("p", { class: "outcome", role: "status" });
  const left = el("dd", { class: "time-left" }, timeLeft(a.expires_at));
  const viewer = !session.can_act;
  const title = viewer ? "Needs the operator role" : null;
  const decide = async (verb, button) => {
    button.disabled = true;
    try {
      const done = await api(`/admin/api/approvals/${encodeURIComponent(a.id)}/${verb}`, { comment: comment.value || null });
      outcome.className = "outcome v-ok";
      outcome.textContent = `✔ ${done.status} by ${done.decided_by}`;
      refreshApprovals();
    } catch (error) {
      outcome.className = "outcome v-deny";
      outcome.textContent = `✖ ${error.status}: ${error.message}`;
      button.disabled = false;
    }
  };
  const approve = el("button", { type: "button", class: "approve", disabled: viewer, title }, "✔ Approve");
  const deny = el("button", { type: "button", class: "deny", disabled: viewer, title }, "✖ Deny");
  approve.addEventListener("click", () => decide("approve", approve));
  deny.addEventListener("click", () => decide("deny", deny));
  const card = el(
    "article",
    { class: "card approval", "data-id": a.id, "aria-label": `Approval for ${a.server}/${a.tool}` },
    el("h3", {}, `${a.server}/${a.tool} — requested by ${a.principal}`),
    el(
      "dl",
      { class: "meta" },
      field("Reason", a.reason),
      field("Approvers", a.approvers.join(", ")),
      [el("dt", {}, "Time left"), left],
      field("Policy revision", short(a.policy_revision, 16)),
      field("Requested", when(a.created_at)),
      field("Id", a.id),
    ),
    el("pre", { class: "arguments", "aria-label": "Canonical arguments" }, json(a.arguments)),
    el("div", { class: "actions" }, comment, approve, deny),
    outcome,
  );
  return { card, left, approval: a };
}

async function refreshApprovals() {
  let all;
  try {
    all = (await api("/admin/api/approvals")).approvals;
    showError(null);
  } catch (error) {
    showError(error);
    return;
  }
  const pending = all.filter((a) => a.status === "pending");
  $("#approvals-count").textContent = pending.length ? String(pending.length) : "";
  const list = $("#approvals-list");
  const ids = new Set(pending.map((a) => a.id));
  for (const [id, entry] of approvalCards) {
    if (!ids.has(id)) {
      entry.card.remove();
      approvalCards.delete(id);
    }
  }
  for (const a of pending) {
    if (!approvalCards.has(a.id)) {
      const entry = approvalCard(a);
      approvalCards.set(a.id, entry);
      list.append(entry.card);
    }
  }
  $("#approvals-note").textContent = pending.length
    ? session.can_act
      ? "Read the arguments, then approve or deny."
      : "You are a viewer: approving and denying need the operator role."
    : "No call is waiting for an approval.";
  const done = all.filter((a) => a.status !== "pending").slice(0, 20);
  $("#approvals-done tbody").replaceChildren(
    ...done.map((a) =>
      el(
        "tr",
        { "data-id": a.id },
        el("td", { class: `verdict ${["granted", "executed"].includes(a.status) ? "v-ok" : "v-deny"}` }, `${["granted", "executed"].includes(a.status) ? "✔" : "✖"} ${a.status}`),
        el("td", {}, a.principal),
        el("td", {}, `${a.server}/${a.tool}`),
        el("td", {}, a.decided_by || "—"),
        el("td", {}, a.comment || "—"),
        el("td", { class: "mono" }, a.id),
      ),
    ),
  );
}

function tickApprovals() {
  for (const entry of approvalCards.values()) entry.left.textContent = timeLeft(entry.approval.expires_at);
}

// ------------------------------------------------------------------------------------------- pins
function diffView(change) {
  const cells = [el("div", { class: "head" }, `Approved ${short(change.approved_sha256)}`), el("div", { class: "head" }, `Pending ${short(change.sha256)}`)];
  for (const row of change.rows) {
    const oldClass = row.op === "changed" ? "changed-old" : row.op === "removed" ? "removed" : "";
    const newClass = row.op === "changed" ? "changed-new" : row.op === "added" ? "added" : "";
    cells.push(el("div", { class: oldClass }, row.old ?? ""), el("div", { class: newClass }, row.new ?? ""));
  }
  return el("div", { class: "diff", role: "table", "aria-label": `Definition diff of ${change.server}/${change.tool}` }, cells);
}

function pinCard(change) {
  const outcome = el("p", { class: "outcome", role: "status" });
  const approve = el("button", { type: "button", class: "approve", disabled: !session.can_act, title: session.can_act ? null : "Needs the operator role" }, "✔ Approve this definition");
  approve.addEventListener("click", async () => {
    approve.disabled = true;
    try {
      const done = await api(`/admin/api/pins/${encodeURIComponent(change.server)}/${encodeURIComponent(change.tool)}/approve`, { sha256: change.sha256 });
      outcome.className = "outcome v-ok";
      outcome.textContent = `✔ approved ${short(done.sha256)} by ${done.approved_by}`;
      refreshPins();
    } catch (error) {
      outcome.className = "outcome v-deny";
      outcome.textContent = `✖ ${error.status}: ${error.message}`;
      approve.disabled = false;
    }
  });
  return el(
    "article",
    { class: "card pin", "data-tool": `${change.server}/${change.tool}` },
    el("h3", {}, `⚠ CHANGED ${change.server}/${change.tool}`),
    el("p", { class: "hint" }, `First seen ${when(change.first_seen)}. Calls are denied (tool_changed) until the new definition is approved.`),
    diffView(change),
    el("div", { class: "actions" }, approve),
    outcome,
  );
}

let pinsDrawn = "";

async function refreshPins() {
  let data;
  try {
    data = await api("/admin/api/pins");
    showError(null);
  } catch (error) {
    showError(error);
    return;
  }
  $("#pins-count").textContent = data.pending.length ? String(data.pending.length) : "";
  if (currentPage() !== "pins") return;
  // Redraw only when something changed: an operator may be reading (or about to click) a diff.
  const key = JSON.stringify([data.pending.map((c) => c.sha256), data.pins.map((p) => [p.tool, p.sha256])]);
  if (key === pinsDrawn) return;
  pinsDrawn = key;
  $("#pins-pending").replaceChildren(
    ...(data.pending.length ? data.pending.map(pinCard) : [el("p", { class: "hint" }, "✔ No changed tool definitions awaiting approval.")]),
  );
  $("#pins-table tbody").replaceChildren(
    ...data.pins.map((p) => el("tr", {}, el("td", {}, p.server), el("td", {}, p.tool), el("td", { class: "mono" }, short(p.sha256)), el("td", {}, when(p.pinned_at)), el("td", {}, p.approved_by || "—"))),
  );
}

// ------------------------------------------------------------------------------------------- health
function readyText(ok) {
  return el("span", { class: `verdict ${ok ? "up" : "down"}` }, ok ? "▲ ready" : "▼ NOT READY");
}

function card(title, ...content) {
  return el("section", { class: "card" }, el("h3", {}, title), ...content);
}

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))), el("tbody", {}, rows));
}

// ------------------------------------------------------------------------------------------- charts
// /admin/api/metrics answers the last five minutes of the replica that served the request, sampled by that
// process every 2 s (rates and quantiles computed there): behind a load balancer, successive polls reach
// different processes, whose counters a page must not difference. The page only draws the latest answer.
// Okabe-Ito colours, and never colour alone: each series has its own dash pattern and marker, a legend with
// its symbol, and the latest values in words; each chart is a focusable figure labelled by its caption.
const SERIES = {
  allow: { name: "✔ allow", cls: "s-allow" },
  deny: { name: "✖ deny", cls: "s-deny" },
  error: { name: "✖ error", cls: "s-error" },
  p50: { name: "p50", cls: "s-allow" },
  p99: { name: "p99", cls: "s-deny" },
  approvals: { name: "pending", cls: "s-warn" },
  queue: { name: "queued", cls: "s-neutral" },
};
const SVG = "http://www.w3.org/2000/svg";
const W = 300;
const H = 90;
const PAD = { left: 56, right: 6, top: 8, bottom: 16 };

function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

const fmt = (v) => (v === null || v === undefined ? "—" : Number.isInteger(v) || v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));

function niceTop(values) {
  const top = Math.max(0, ...values.filter((v) => v !== null));
  if (top <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(top));
  return Math.ceil(top / step) * step;
}

function chart(id, label, unit, times, series) {
  const all = series.flatMap((s) => s.values);
  const top = niceTop(all);
  const t0 = times[0] ?? 0;
  const span = Math.max(1, (times.at(-1) ?? 1) - t0);
  const x = (t) => PAD.left + ((t - t0) / span) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
  const captionId = `${id}-caption`;
  const svg = svgEl("svg", { id, viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "aria-labelledby": captionId, "data-max": Math.max(0, ...all.filter((v) => v !== null)), "data-points": times.length });
  svg.append(
    svgEl("line", { x1: PAD.left, x2: W - PAD.right, y1: y(top), y2: y(top), class: "grid" }),
    svgEl("line", { x1: PAD.left, x2: W - PAD.right, y1: y(0), y2: y(0), class: "axis" }),
    svgEl("text", { x: PAD.left - 4, y: y(top) + 4, class: "tick end" }, `${fmt(top)}${unit}`),
    svgEl("text", { x: PAD.left - 4, y: y(0) + 4, class: "tick end" }, "0"),
    svgEl("text", { x: PAD.left, y: H - 3, class: "tick" }, `−${Math.round(span / 60) || "<1"} min`),
    svgEl("text", { x: W - PAD.right, y: H - 3, class: "tick end" }, "now"),
  );
  for (const s of series) {
    let run = [];
    const flush = () => {
      if (run.length) svg.append(svgEl("polyline", { points: run.join(" "), class: `line ${s.cls}` }));
      run = [];
    };
    s.values.forEach((v, i) => (v === null ? flush() : run.push(`${x(times[i]).toFixed(1)},${y(v).toFixed(1)}`)));
    flush();
    const last = s.values.findLastIndex((v) => v !== null);
    if (last >= 0) svg.append(svgEl("circle", { cx: x(times[last]).toFixed(1), cy: y(s.values[last]).toFixed(1), r: 3, class: `mark ${s.cls}` }));
  }
  const latest = series.map((s) => `${s.name} ${fmt(s.values.findLast((v) => v !== null) ?? null)}${unit}`).join(", ");
  const legend = el("span", { class: "legend" }, series.map((s) => el("span", { class: `key ${s.cls}` }, s.name)));
  return el("figure", { class: "chart", tabindex: 0 }, svg, el("figcaption", { id: captionId }, el("strong", {}, label), " — now: ", latest, " ", legend));
}

function charts(m) {
  if (!m || !m.points.length) return card("Last minutes", el("p", { class: "hint" }, "sampling… (a point every 2 s)"));
  const pts = m.points;
  const times = pts.map((p) => p.t);
  const decisions = ["allow", "deny", ...(pts.some((p) => p.calls.error) ? ["error"] : [])];
  return card(
    `Last ${Math.max(1, Math.round((times.at(-1) - times[0]) / 60))} min — replica ${m.replica}`,
    el(
      "div",
      { class: "charts" },
      chart("chart-calls", "tools/call per second", "/s", times, decisions.map((d) => ({ ...SERIES[d], values: pts.map((p) => p.calls[d] ?? 0) }))),
      chart("chart-latency", "tools/call latency", " ms", times, [
        { ...SERIES.p50, values: pts.map((p) => p.p50_ms) },
        { ...SERIES.p99, values: pts.map((p) => p.p99_ms) },
      ]),
      chart("chart-approvals", "approvals pending", "", times, [{ ...SERIES.approvals, values: pts.map((p) => p.approvals_pending) }]),
      chart("chart-queue", "audit queue", "", times, [{ ...SERIES.queue, values: pts.map((p) => p.audit_queue) }]),
    ),
    el("p", { class: "hint" }, "Sampled by the replica that answered (every 2 s, five minutes kept); all replicas: Prometheus on /metrics."),
  );
}

// An upstream's last stderr lines (scrubbed of secrets by the server), in a disclosure kept open across refreshes.
const openStderr = new Set();

function stderrLines(name, lines) {
  const box = el("details", { class: "stderr", "data-upstream": name, open: openStderr.has(name) },
    el("summary", {}, `${name}: last ${lines.length} stderr line${lines.length === 1 ? "" : "s"}`),
    lines.length ? el("pre", { class: "stderr-lines" }, lines.join("\n")) : el("p", { class: "hint" }, "nothing written to stderr"),
  );
  box.addEventListener("toggle", () => (box.open ? openStderr.add(name) : openStderr.delete(name)));
  return box;
}

async function refreshHealth() {
  let h;
  let metrics;
  try {
    [h, metrics] = await Promise.all([api("/admin/api/health"), api("/admin/api/metrics")]);
    showError(null);
  } catch (error) {
    showError(error);
    return;
  }
  const upstreams = Object.entries(h.upstreams);
  const calls = Object.entries(h.calls);
  const most = Math.max(1, ...calls.map(([, n]) => n));
  $("#health").replaceChildren(
    el("p", { class: `verdict ${h.status === "ready" ? "up" : "down"}`, role: "status" }, h.status === "ready" ? "▲ Ready: the policy engine decides and the audit store writes" : "▼ NOT READY"),
    el(
      "div",
      { class: "grid" },
      card("Policy engine", el("dl", { class: "meta" }, field("State", readyText(h.policy.ready)), field("Engine", h.policy.engine), field("Revision", short(h.policy.revision, 16)), field("Problem", h.policy.problem))),
      card("Audit store", el("dl", { class: "meta" }, field("State", readyText(h.audit.ready)), field("Backend", h.audit.backend), field("Queued", h.audit.queued ?? "—"), field("Problem", h.audit.problem))),
      card(
        "Calls since start",
        calls.length
          ? table(["Decision", "Count", ""], calls.map(([d, n]) => el("tr", {}, el("td", {}, d === "allow" ? "✔ allow" : d === "deny" ? "✖ deny" : d), el("td", {}, n), el("td", {}, el("meter", { min: 0, max: most, value: n, "aria-label": `${d} ${n}` })))))
          : el("p", { class: "hint" }, "none yet"),
      ),
    ),
    charts(metrics),
    card(
      "Upstreams",
      upstreams.length
        ? table(["Upstream", "Up", "State", "Restarts", "Problem", "Last failure"], upstreams.map(([name, u]) => el("tr", {}, el("td", {}, name, u.pooled ? ` (pooled: ${Object.keys(u.children).length} running)` : ""), el("td", { class: `verdict ${u.up ? "up" : "down"}` }, u.up ? "▲ up" : "▼ DOWN"), el("td", {}, u.state), el("td", {}, u.restarts), el("td", {}, u.problem || "—"), el("td", {}, u.last_failure || "—"))))
        : el("p", { class: "hint" }, "no upstreams"),
      upstreams.map(([name, u]) => stderrLines(name, u.stderr || [])),
    ),
    el(
      "div",
      { class: "grid" },
      card("Sessions by principal", Object.keys(h.sessions).length ? table(["Principal", "Sessions"], Object.entries(h.sessions).map(([p, n]) => el("tr", {}, el("td", {}, p), el("td", {}, n)))) : el("p", { class: "hint" }, "no open sessions")),
      card("Most frequent denials", h.denials.length ? table(["Server/tool", "Reason", "Count"], h.denials.map((d) => el("tr", {}, el("td", {}, `${d.server}/${d.tool}`), el("td", {}, d.reason || "policy"), el("td", {}, d.count)))) : el("p", { class: "hint" }, "none")),
      card("Console", el("dl", { class: "meta" }, field("Event streams open", h.console.event_streams))),
    ),
  );
}

// ------------------------------------------------------------------------------------------- who can see what
async function loadPrincipals() {
  try {
    const { principals } = await api("/admin/api/access");
    $("#principal-ids").replaceChildren(...principals.map((p) => el("option", { value: p })));
  } catch (error) {
    showError(error);
  }
}

async function showAccess() {
  const principal = new FormData($("#access-form")).get("principal");
  try {
    const access = await api(`/admin/api/access?principal=${encodeURIComponent(principal)}`);
    $("#access-tools tbody").replaceChildren(
      ...(access.tools.length
        ? access.tools.map((t) => el("tr", {}, el("td", { class: "mono" }, t.name), el("td", {}, t.description)))
        : [el("tr", {}, el("td", { colspan: 2 }, `${access.principal} may list no tool`))]),
    );
    $("#tool-names").replaceChildren(...access.tools.map((t) => el("option", { value: t.name })));
    showError(null);
  } catch (error) {
    showError(error);
  }
}

async function tryCall() {
  const form = new FormData($("#try-form"));
  const out = $("#try-result");
  let args;
  try {
    args = JSON.parse(String(form.get("arguments") || "{}"));
  } catch (error) {
    out.replaceChildren(el("p", { class: "error" }, `✖ the arguments are not JSON: ${error.message}`));
    return;
  }
  try {
    const principal = new FormData($("#access-form")).get("principal");
    const { decision } = await api("/admin/api/access/try", { principal, tool: form.get("tool"), arguments: args });
    const v = decision.allow ? { text: "✔ ALLOW", cls: "v-allow" } : { text: "✖ DENY", cls: "v-deny" };
    out.replaceChildren(...nodes(
      el("p", { class: `verdict ${v.cls}` }, v.text),
      el("dl", { class: "meta" }, field("Reasons", decision.reasons.join("; ")), field("Code", decision.code), field("Revision", short(decision.revision, 16))),
      Object.keys(decision.obligations).length ? [el("h4", {}, "Obligations (shown, not enforced)"), el("pre", {}, json(decision.obligations))] : null,
      el("p", { class: "hint" }, "As policy eval: no rate-limit usage and no flow are known here."),
    ));
  } catch (error) {
    out.replaceChildren(el("p", { class: "error" }, `✖ ${error.status}: ${error.message}`));
  }
}

// ------------------------------------------------------------------------------------------- pages
const PAGES = ["live", "approvals", "pins", "health", "access"];
const POLLS = { approvals: [refreshApprovals, 2000], pins: [refreshPins, 3000], health: [refreshHealth, 3000], live: [refreshChain, 10000], access: [loadPrincipals, 30000] };
let poll = null;

function currentPage() {
  const page = location.hash.slice(1);
  return PAGES.includes(page) ? page : "live";
}

function show() {
  const page = currentPage();
  for (const name of PAGES) {
    $(`#page-${name}`).hidden = name !== page;
    const link = $(`#nav-${name}`);
    if (name === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (poll) clearInterval(poll);
  pinsDrawn = "";
  const [refresh, every] = POLLS[page];
  refresh();
  poll = setInterval(refresh, every);
}

async function main() {
  try {
    const response = await fetch("/console/session", { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) {
      location.assign("/console/login?e=expired");
      return;
    }
    session = await response.json();
  } catch (error) {
    showError(error);
    return;
  }
  $("#who").textContent = `${session.principal} (${session.can_act ? "operator" : "viewer"})`;
  $("#logout").addEventListener("click", async () => {
    await fetch("/console/logout", { method: "POST", credentials: "same-origin", headers: { [session.csrf_header]: session.csrf_token } });
    location.assign("/console/login");
  });
  $("#filters").addEventListener("submit", (submit) => {
    submit.preventDefault();
    startStream();
  });
  $("#access-form").addEventListener("submit", (submit) => {
    submit.preventDefault();
    showAccess();
  });
  $("#try-form").addEventListener("submit", (submit) => {
    submit.preventDefault();
    tryCall();
  });
  window.addEventListener("hashchange", show);
  setInterval(tickApprovals, 1000);
  setInterval(() => {
    if (currentPage() !== "approvals") refreshApprovals();
    if (currentPage() !== "pins") refreshPins();
  }, 5000);
  startStream();
  show();
}

main();
