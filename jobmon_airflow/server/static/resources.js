// Scatter plots of used against requested memory and runtime, one pair per task template, from the JSON block
// the page carries (no inline script: the page's CSP allows scripts from this server only).
(function () {
  "use strict";

  var COLORS = { D: "#2e7d32", Z: "#c62828", E: "#ef6c00", F: "#6a1b9a" };

  function suggestedMemoryGiB(suggested) {
    var m = suggested && suggested.memory;
    if (typeof m === "number") return m;
    if (typeof m === "string" && /^[0-9.]+G$/.test(m)) return parseFloat(m);
    return null;
  }

  function traces(points, suggested, unit) {
    var byStatus = {};
    points.forEach(function (p) {
      if (p[0] === null || p[1] === null) return;
      var s = p[2];
      (byStatus[s] = byStatus[s] || { x: [], y: [], ids: [] });
      byStatus[s].x.push(p[0]);
      byStatus[s].y.push(p[1]);
      byStatus[s].ids.push(p[3]);
    });
    var out = Object.keys(byStatus).sort().map(function (s) {
      return {
        type: "scatter", mode: "markers", name: "status " + s, x: byStatus[s].x, y: byStatus[s].y,
        customdata: byStatus[s].ids, marker: { color: COLORS[s] || "#546e7a", size: 7, opacity: 0.75 },
        hovertemplate: "task %{customdata}<br>requested %{x:.3g} " + unit + "<br>used %{y:.3g} " + unit +
          "<extra>" + s + "</extra>"
      };
    });
    var hi = 0;
    points.forEach(function (p) { hi = Math.max(hi, p[0] || 0, p[1] || 0); });
    if (suggested !== null) hi = Math.max(hi, suggested);
    hi = hi * 1.1 || 1;
    out.push({ type: "scatter", mode: "lines", name: "used = requested", x: [0, hi], y: [0, hi],
               line: { color: "#90a4ae", dash: "dot" }, hoverinfo: "skip" });
    if (suggested !== null) {
      out.push({ type: "scatter", mode: "lines", name: "suggested request", x: [0, hi], y: [suggested, suggested],
                 line: { color: "#1565c0", dash: "dash" }, hoverinfo: "skip" });
    }
    return out;
  }

  function plot(id, points, suggested, unit, title, taskUrl) {
    var el = document.getElementById(id);
    if (!el) return;
    var layout = {
      title: { text: title }, margin: { l: 60, r: 20, t: 40, b: 50 }, height: 360,
      xaxis: { title: { text: "requested (" + unit + ")" }, rangemode: "tozero" },
      yaxis: { title: { text: "used (" + unit + ")" }, rangemode: "tozero" },
      legend: { orientation: "h", y: -0.2 }
    };
    window.Plotly.newPlot(el, traces(points, suggested, unit), layout, { displayModeBar: false, responsive: true });
    el.on("plotly_click", function (ev) {
      var p = ev.points && ev.points[0];
      if (p && p.customdata !== undefined) window.location.href = taskUrl + encodeURIComponent(p.customdata);
    });
    el.setAttribute("data-rendered", String(points.length));
  }

  function render() {
    var block = document.getElementById("usage-data");
    if (!block || !window.Plotly) return;
    var data = JSON.parse(block.textContent);
    data.templates.forEach(function (t, i) {
      plot("memory-" + i, t.memory, suggestedMemoryGiB(t.suggested), "GiB", "Memory: used (max RSS) vs requested",
           data.task_url);
      var rt = t.suggested && typeof t.suggested.runtime === "number" ? t.suggested.runtime : null;
      plot("runtime-" + i, t.runtime, rt, "s", "Runtime: used (wallclock) vs requested", data.task_url);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", render);
  else render();
})();
