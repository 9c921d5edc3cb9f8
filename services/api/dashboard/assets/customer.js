/* The customer page (/dashboard): one key's quota, usage and projection,
 * from the /v1/me routes. Signs in with a dashboard link (#link=<token>,
 * sent as Authorization: Bearer) or, less safely, the API key itself
 * (#key=<key>, sent as x-api-key). The credential is moved from the URL to
 * sessionStorage (this tab only) and the fragment is cleared, so that the
 * address bar, history and screenshots do not keep it. */
"use strict";
(function () {
  const T = window.Tally;
  const REFRESH_MS = 60000;
  const HOUR_MS = 3600e3, DAY_MS = 86400e3;
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let lastGood = null;

  function takeCredentialFromUrl() {
    const hash = new URLSearchParams(location.hash.slice(1));
    if (hash.get("link")) {
      sessionStorage.setItem("tally.link", hash.get("link"));
      sessionStorage.removeItem("tally.key");
    } else if (hash.get("key")) {
      sessionStorage.setItem("tally.key", hash.get("key"));
      sessionStorage.removeItem("tally.link");
    }
    if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  }

  function headers() {
    const link = sessionStorage.getItem("tally.link");
    if (link) return { Authorization: "Bearer " + link };
    const key = sessionStorage.getItem("tally.key");
    if (key) return { "x-api-key": key };
    return null;
  }

  function showSignin(message, kind) {
    $("content").hidden = true;
    $("signin").hidden = false;
    T.setStatus($("status"), kind || "info", message);
  }

  function iso(ms) { return new Date(ms).toISOString(); }

  /* The start of the period before the one starting at `start` (UTC, as
   * Tally counts). A DAY quota shows 14 days: two bars say little. */
  function previousStart(period, start) {
    const d = new Date(start);
    if (period === "MONTH") return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() - 1, 1);
    if (period === "WEEK") return start - 7 * DAY_MS;
    return start - 13 * DAY_MS;
  }

  function usagePath(params) { return "/v1/me/usage?" + new URLSearchParams(params).toString(); }

  function arcPath(fraction) {
    const f = Math.max(0, Math.min(1, fraction));
    const angle = Math.PI * (1 - f);
    const x = 90 + 70 * Math.cos(angle), y = 95 - 70 * Math.sin(angle);
    return "M 20 95 A 70 70 0 0 1 " + x.toFixed(2) + " " + y.toFixed(2);
  }

  function renderGauge(q) {
    const svgNs = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(svgNs, "svg");
    svg.setAttribute("viewBox", "0 0 180 110");
    svg.setAttribute("aria-hidden", "true");
    const track = document.createElementNS(svgNs, "path");
    track.setAttribute("d", arcPath(1));
    track.setAttribute("class", "gauge-track");
    const fill = document.createElementNS(svgNs, "path");
    const left = q.limit > 0 ? q.remaining / q.limit : 0;
    fill.setAttribute("d", arcPath(left));
    fill.setAttribute("class", "gauge-fill" + (left <= 0 ? " bad" : left < 0.2 ? " warn" : ""));
    svg.append(track, fill);
    const pct = q.limit > 0 ? Math.round(100 * left) : 0;
    $("gauge").replaceChildren(svg, T.el("div", {}, [
      T.el("div", { class: "big", id: "remaining", "data-value": q.remaining, text: T.units(q.remaining) + " left" }),
      T.el("div", { text: "of " + T.units(q.limit) + " this " + q.period.toLowerCase() + " (" + pct + " % left)" }),
    ]));
    $("gauge").setAttribute("aria-label", T.fmt(q.remaining) + " of " + T.fmt(q.limit) + " units left");
    const rows = [["Used", "used", T.units(q.used), q.used], ["Limit", "limit", T.units(q.limit), q.limit],
                  ["Overage", "overage", T.units(q.overage), q.overage],
                  ["Period", "period", q.period.toLowerCase() + " (UTC)", q.period],
                  ["Resets", "resets", T.localTime(q.periodEnd), q.periodEnd]];
    $("quota-facts").replaceChildren(...rows.flatMap(([name, id, text, value]) => [
      T.el("dt", { text: name }), T.el("dd", { id: "quota-" + id, "data-value": value, text, class: id === "overage" && q.overage > 0 ? "over" : null })]));
  }

  function renderProjection(q, now) {
    const start = Date.parse(q.periodStart), end = Date.parse(q.periodEnd);
    const elapsedH = Math.max((now - start) / HOUR_MS, 1 / 60);
    const rate = q.used / elapsedH;
    const projected = Math.round(q.used + rate * Math.max(0, (end - now) / HOUR_MS));
    const overage = Math.max(0, projected - q.limit);
    const rows = [["Current rate", "rate", T.fmt1(rate) + " units/hour", rate],
                  ["Projected use by the reset", "used", T.units(projected), projected],
                  ["Projected overage", "overage", T.units(overage), overage]];
    $("projection").replaceChildren(...rows.flatMap(([name, id, text, value]) => [
      T.el("dt", { text: name }), T.el("dd", { id: "projected-" + id, "data-value": value, text, class: id === "overage" && overage > 0 ? "over" : null })]));
    $("projection-note").textContent = overage > 0
      ? "At the rate since the period began, this key goes past its quota before the reset."
      : "At the rate since the period began, this key stays within its quota.";
  }

  /* "Used in the quota period" at the end of each bucket. In the current
   * period it is anchored on the quota's `used` and walked back (the
   * period may have begun before the chart's first bucket); in earlier
   * periods it runs forward from their start; before `from` (where an
   * earlier period's start is not in the chart) it is null. */
  function periodTotals(items, q, from) {
    const qStart = Date.parse(q.periodStart);
    const periodOf = (t) => (q.period === "DAY" ? t - (t % DAY_MS) : t >= qStart ? qStart : -1);
    const totals = new Array(items.length).fill(null);
    let after = 0;
    for (let i = items.length - 1; i >= 0; i--) {
      if (Date.parse(items[i].start) < qStart) break;
      totals[i] = Math.max(0, q.used - after);
      after += items[i].units;
    }
    let total = 0, current = null;
    items.forEach((item, i) => {
      const t = Date.parse(item.start);
      if (t >= qStart || t < from) return;
      if (periodOf(t) !== current) { current = periodOf(t); total = 0; }
      total += item.units;
      totals[i] = total;
    });
    return totals;
  }

  function renderSeries(kind, usage, q, granularityLabel) {
    const items = usage.items;
    const xs = items.map((i) => Date.parse(i.start) / 1000);
    const series = [{ label: "Units per " + granularityLabel, values: items.map((i) => i.units), color: "#1c5fb8", bars: true }];
    if (q) {
      const qStart = Date.parse(q.periodStart);
      /* Hourly: the periods whose start is in the window; daily: both. */
      const from = kind === "daily" ? Date.parse(usage.from) : qStart - (q.period === "DAY" ? DAY_MS : 0);
      series.push({ label: "Used in the quota period", values: periodTotals(items, q, from), color: "#1d6b35", scale: "total" });
      series.push({ label: "Quota", values: items.map(() => q.limit), color: "#a4161a", dash: [6, 4], scale: "total" });
    }
    T.chart($(kind + "-chart"), null, xs, series);
    $(kind + "-chart").setAttribute("data-from", usage.from);
    $(kind + "-chart").setAttribute("data-to", usage.to);
    T.table($(kind + "-table"), [{ title: "Starting" }, { title: "Requests", num: true }, { title: "Units", num: true }],
            items.map((i) => [T.localTime(i.start), T.fmt(i.requests), T.fmt(i.units)]));
    const total = items.reduce((sum, i) => sum + i.units, 0);
    $(kind + "-total").textContent = T.units(total) + " in total";
    $(kind + "-total").setAttribute("data-value", total);
  }

  function renderEndpoints(usage) {
    const sums = new Map();
    for (const i of usage.items) {
      const key = i.method + " " + i.endpoint;
      const s = sums.get(key) || { method: i.method, endpoint: i.endpoint, requests: 0, units: 0 };
      s.requests += i.requests; s.units += i.units;
      sums.set(key, s);
    }
    const rows = [...sums.values()].sort((a, b) => b.units - a.units);
    T.table($("endpoints"), [{ title: "Method" }, { title: "Endpoint" }, { title: "Requests", num: true }, { title: "Units", num: true }],
            rows.map((r) => [r.method || "–", r.endpoint || "–", T.fmt(r.requests), T.fmt(r.units)]));
  }

  function renderAlerts(result) {
    const items = result.body && (result.body.items || result.body.alerts);
    if (!result.ok || !Array.isArray(items)) { $("alerts-card").hidden = true; return; }
    $("alerts-card").hidden = false;
    $("alerts").replaceChildren(...(items.length ? items.map((a) => T.el("li", {
      text: (a.threshold !== undefined ? a.threshold + " % of the quota" : a.type || "alert") +
            (a.createdAt ? " reached " + T.localTime(a.createdAt) : "") }))
      : [T.el("li", { text: "No threshold reached this period." })]));
  }

  async function load() {
    const h = headers();
    if (!h) { showSignin("Open this page with the dashboard link you were given, or enter it below."); return; }
    const quota = await T.get("/v1/me/quota", h);
    if (quota.status === 0) {
      T.setStatus($("status"), "error", lastGood
        ? "The Tally API cannot be reached; the figures below are as of " + lastGood.toLocaleTimeString() + ". Retrying every minute."
        : "The Tally API cannot be reached. Retrying every minute.");
      return;
    }
    if (quota.status === 401 || quota.status === 403) {
      sessionStorage.removeItem("tally.link");
      sessionStorage.removeItem("tally.key");
      showSignin(quota.code === "link_expired" ? "This dashboard link has expired. Ask for a new link."
                 : quota.status === 403 ? "This API key is disabled." : "This link or key is not valid: " + quota.message, "error");
      return;
    }
    const q = quota.ok && quota.body.limit !== null ? quota.body : null;
    if (!quota.ok && quota.code !== "no_plan") { T.setStatus($("status"), "error", "The quota could not be read: " + quota.message); return; }
    const now = Date.now();
    const periodStart = q ? Date.parse(q.periodStart) : now - (now % DAY_MS);
    const periodEnd = q ? Date.parse(q.periodEnd) : periodStart + DAY_MS;
    const [hourly, daily, endpoints, alerts] = await Promise.all([
      T.get(usagePath({ granularity: "hour", from: iso(now - 48 * HOUR_MS), to: iso(now) }), h),
      T.get(usagePath({ granularity: "day", from: iso(previousStart(q ? q.period : "DAY", periodStart)), to: iso(periodEnd - 1) }), h),
      T.get(usagePath({ granularity: "day", groupBy: "endpoint", from: iso(periodStart), to: iso(Math.max(periodStart, now)) }), h),
      T.get("/v1/me/alerts", h),
    ]);
    const failed = [hourly, daily, endpoints].find((r) => !r.ok);
    if (failed) { T.setStatus($("status"), "error", "Usage could not be read: " + failed.message); return; }
    $("signin").hidden = true;
    $("content").hidden = false;
    T.setStatus($("status"), "info", "");
    $("key-id").textContent = "Key " + quota.body.keyId;
    $("quota-card").hidden = !q;
    $("projection-card").hidden = !q;
    if (q) { renderGauge(q); renderProjection(q, now); }
    renderSeries("hourly", hourly.body, q, "hour");
    renderSeries("daily", daily.body, q, "day");
    renderEndpoints(endpoints.body);
    renderAlerts(alerts);
    lastGood = new Date();
    $("as-of").textContent = T.localTime(quota.body.asOf);
    if (!document.body.hasAttribute("data-loaded-ms"))
      document.body.setAttribute("data-loaded-ms", Math.round(performance.now()));
    document.body.setAttribute("data-loaded", "true");
  }

  function signin(event) {
    event.preventDefault();
    const text = $("credential").value.trim();
    const match = text.match(/[#&]link=([^&]+)/) || text.match(/^(tdl1\.\S+)$/);
    sessionStorage.setItem(match ? "tally.link" : "tally.key", match ? match[1] : text);
    sessionStorage.removeItem(match ? "tally.key" : "tally.link");
    $("credential").value = "";
    load();
  }

  document.addEventListener("DOMContentLoaded", () => {
    takeCredentialFromUrl();
    $("signin-form").addEventListener("submit", signin);
    $("sign-out").addEventListener("click", () => { sessionStorage.clear(); showSignin("Signed out."); });
    load();
    timer = setInterval(load, REFRESH_MS);
  });
  window.addEventListener("resize", () => { if (document.body.getAttribute("data-loaded")) { clearTimeout(timer._r); timer._r = setTimeout(load, 300); } });
})();
