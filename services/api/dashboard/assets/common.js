/* Shared by Tally's two dashboards: number and time formatting, calls to
 * the /v1 routes, small DOM helpers and uPlot charts. Plain ES2017, no
 * build step; every page script is a file (the pages' CSP has no inline
 * script). */
"use strict";
(function () {
  const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const decimalFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const REQUEST_TIMEOUT_MS = 8000;

  /* 12345 -> "12,345" (the viewer's locale's separators). */
  function fmt(n) { return n === null || n === undefined ? "–" : numberFormat.format(n); }
  function fmt1(n) { return n === null || n === undefined ? "–" : decimalFormat.format(n); }
  function units(n) { return fmt(n) + " units"; }

  /* An RFC 3339 time in the viewer's time zone, with the zone's name. */
  function localTime(text) {
    if (!text) return "–";
    return new Date(text).toLocaleString(undefined, {
      weekday: "short", year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit", timeZoneName: "short",
    });
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "text") node.textContent = value;
      else if (value !== undefined && value !== null) node.setAttribute(name, value);
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  /* GET `path` with `headers`; resolves to {ok, status, body, code,
   * message}: status 0 when the api could not be reached at all. */
  async function get(path, headers) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    try {
      const response = await fetch(path, { headers, signal: controller.signal, cache: "no-store" });
      let body = null;
      try { body = await response.json(); } catch (e) { body = null; }
      const error = body && body.error ? body.error : {};
      return { ok: response.ok, status: response.status, body,
               code: error.code || "", message: error.message || response.statusText };
    } catch (e) {
      return { ok: false, status: 0, body: null, code: "unreachable",
               message: "the Tally API could not be reached (" + (e.name || "network error") + ")" };
    } finally {
      clearTimeout(timer);
    }
  }

  function setStatus(node, kind, text) {
    node.className = "status " + kind;
    node.textContent = text;
  }

  /* A table: `columns` = [{title, num}], `rows` = arrays of cells (text
   * or nodes). */
  function table(node, columns, rows) {
    node.replaceChildren();
    const head = el("tr", {}, columns.map((c) => el("th", { scope: "col", class: c.num ? "num" : null, text: c.title })));
    node.append(el("thead", {}, [head]));
    const body = el("tbody");
    for (const row of rows) {
      body.append(el("tr", {}, row.map((cell, i) => {
        const td = el("td", { class: columns[i].num ? "num" : null });
        td.append(cell instanceof Node ? cell : document.createTextNode(cell));
        return td;
      })));
    }
    node.append(body);
  }

  /* A uPlot chart in `node` (replacing any earlier one): x = unix
   * seconds; `series` = [{label, values, color, bars, dash, scale}]. */
  function chart(node, title, xs, series) {
    if (node._plot) node._plot.destroy();
    node.replaceChildren();
    if (typeof uPlot === "undefined") {
      node.textContent = "The chart library did not load; the data table below has the numbers.";
      return;
    }
    const width = Math.max(280, node.clientWidth || 600);
    const opts = {
      title, width, height: 260,
      scales: { x: { time: true } },
      axes: [{}, { scale: "y", size: 64, values: (u, ticks) => ticks.map(fmt) },
             series.some((s) => s.scale === "total") ? { scale: "total", side: 1, size: 72, grid: { show: false }, values: (u, ticks) => ticks.map(fmt) } : { show: false }],
      series: [{}].concat(series.map((s) => ({
        label: s.label, stroke: s.color, fill: s.bars ? s.color + "99" : undefined,
        width: s.bars ? 1 : 2, dash: s.dash, scale: s.scale || "y",
        paths: s.bars ? uPlot.paths.bars({ size: [0.8, 40] }) : undefined,
        points: { show: false }, value: (u, v) => fmt(v),
      }))),
    };
    node._plot = new uPlot(opts, [xs].concat(series.map((s) => s.values)), node);
  }

  window.Tally = { fmt, fmt1, units, localTime, el, get, setStatus, table, chart };
})();
