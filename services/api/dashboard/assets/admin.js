/* The operator overview (/dashboard/admin): GET /v1/status,
 * /v1/quotas/nearest and /v1/usage/top with the admin token, which is
 * typed once and kept in sessionStorage (this tab only, never in the URL).
 * Each figure is a link to its route; following it shows that route's
 * answer below (fetched with the token: a plain link would lack it). */
"use strict";
(function () {
  const T = window.Tally;
  const REFRESH_MS = 15000;
  const $ = (id) => document.getElementById(id);
  const ROUTES = { status: "/v1/status", nearest: "/v1/quotas/nearest?limit=10", top: "/v1/usage/top?limit=10" };

  function headers() {
    const token = sessionStorage.getItem("tally.admin");
    return token ? { Authorization: "Bearer " + token } : null;
  }

  /* A figure that links to its route: `value` is the raw number. */
  function figure(text, route, value, id) {
    const a = T.el("a", { href: route, "data-route": route, "data-value": value, id, title: "from GET " + route, text });
    a.addEventListener("click", showSource);
    return a;
  }

  async function showSource(event) {
    event.preventDefault();
    const route = event.currentTarget.getAttribute("data-route");
    const result = await T.get(route, headers());
    $("source-card").hidden = false;
    $("source-title").textContent = "GET " + route + " (" + (result.status || "unreachable") + ")";
    $("source").textContent = JSON.stringify(result.body, null, 2);
    $("source").focus();
  }

  function facts(node, rows) {
    node.replaceChildren(...rows.flatMap(([name, content]) => [T.el("dt", { text: name }), T.el("dd", {}, [content])]));
  }

  function age(text) {
    if (!text) return "never";
    const s = Math.max(0, Math.round((Date.now() - Date.parse(text)) / 1000));
    const ago = s < 120 ? T.fmt(s) + " s" : s < 7200 ? T.fmt(Math.round(s / 60)) + " min" : T.fmt(Math.round(s / 3600)) + " h";
    const when = s < 86400 ? new Date(text).toLocaleTimeString() : T.localTime(text);
    return when + " (" + ago + " ago)";
  }

  function renderStatus(st) {
    const r = ROUTES.status;
    facts($("pipeline"), [
      ["Events counted per second", figure(T.fmt1(st.eventsPerSecond) + " events/s", r, st.eventsPerSecond, "events-per-second")],
      ["Collector lag", figure(T.fmt(st.lag) + " messages", r, st.lag, "lag")],
      ["Last commit", figure(age(st.lastCommitAt), r, st.lastCommitAt || "", "last-commit")],
      ["Collectors seen (7 days)", figure(T.fmt(st.collectors.length), r, st.collectors.length, "collector-count")],
    ]);
    const codes = Object.entries(st.dlqByCode).sort((a, b) => b[1] - a[1]);
    facts($("dlq"), codes.length ? codes.map(([code, n]) => [code, figure(T.fmt(n) + " events", r, n, "dlq-" + code)])
                                 : [["None", figure("0 events", r, 0, "dlq-none")]]);
    facts($("billing"), [
      ["Reports pending", figure(T.fmt(st.reporter.pending), r, st.reporter.pending, "reporter-pending")],
      ["Reports parked", figure(T.fmt(st.reporter.parked), r, st.reporter.parked, "reporter-parked")],
      ["Last report accepted", figure(age(st.reporter.lastSuccessAt), r, st.reporter.lastSuccessAt || "", "reporter-last")],
      ["Webhooks failing (retrying)", figure(T.fmt(st.webhooks.failing), r, st.webhooks.failing, "webhooks-failing")],
      ["Webhooks parked", figure(T.fmt(st.webhooks.parked), r, st.webhooks.parked, "webhooks-parked")],
    ]);
    T.table($("collectors"), [{ title: "Instance" }, { title: "Group" }, { title: "Events/s", num: true },
                              { title: "Counted since start", num: true }, { title: "Lag", num: true }, { title: "Last commit" }],
            st.collectors.map((c) => [c.instance, c.kafkaGroup, figure(T.fmt1(c.eventsPerSecond), r, c.eventsPerSecond),
                                      figure(T.fmt(c.eventsCounted), r, c.eventsCounted),
                                      figure(c.lag === null ? "–" : T.fmt(c.lag), r, c.lag), age(c.lastCommitAt)]));
  }

  function renderNearest(body) {
    const r = ROUTES.nearest;
    T.table($("nearest"), [{ title: "Key" }, { title: "Plan" }, { title: "Used", num: true }, { title: "Limit", num: true },
                           { title: "Of quota", num: true }, { title: "Resets" }],
            body.items.map((k) => [k.name ? k.name + " (" + k.keyId + ")" : k.keyId, k.planId + ", per " + k.period.toLowerCase(),
                                   figure(T.units(k.used), r, k.used), figure(T.units(k.limit), r, k.limit),
                                   figure(T.fmt1(k.percent) + " %", r, k.percent), T.localTime(k.periodEnd)]));
  }

  function renderTop(body) {
    const r = ROUTES.top;
    T.table($("top"), [{ title: "Key" }, { title: "Units", num: true }, { title: "Requests", num: true }],
            body.items.map((k) => [k.name ? k.name + " (" + k.keyId + ")" : k.keyId,
                                   figure(T.units(k.units), r, k.units, "top-units-" + k.keyId), figure(T.fmt(k.requests), r, k.requests)]));
  }

  function showSignin(message, kind) {
    $("content").hidden = true;
    $("signin").hidden = false;
    T.setStatus($("status"), kind || "info", message);
  }

  async function load() {
    const h = headers();
    if (!h) { showSignin("Enter the admin token to see the overview."); return; }
    const [status, nearest, top] = await Promise.all([T.get(ROUTES.status, h), T.get(ROUTES.nearest, h), T.get(ROUTES.top, h)]);
    const refused = [status, nearest, top].find((r) => r.status === 401);
    if (refused) {
      sessionStorage.removeItem("tally.admin");
      showSignin("The admin token was refused: " + refused.message, "error");
      document.body.setAttribute("data-refused", "true");
      return;
    }
    const failed = [status, nearest, top].find((r) => !r.ok);
    if (failed) {
      T.setStatus($("status"), "error", failed.status === 0 ? "The Tally API cannot be reached; retrying." : "The overview could not be read: " + failed.message);
      return;
    }
    $("signin").hidden = true;
    $("content").hidden = false;
    T.setStatus($("status"), "info", "");
    renderStatus(status.body);
    renderNearest(nearest.body);
    renderTop(top.body);
    $("as-of").textContent = T.localTime(status.body.asOf);
    document.body.setAttribute("data-loaded", "true");
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem("tally.admin", $("token").value);
      $("token").value = "";
      load();
    });
    $("sign-out").addEventListener("click", () => { sessionStorage.removeItem("tally.admin"); showSignin("The token is forgotten."); });
    load();
    setInterval(load, REFRESH_MS);
  });
})();
