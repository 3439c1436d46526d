// nabd console charts: uPlot (vendored) over JSON embedded in the page (<script type="application/json">),
// no inline script (the Content-Security-Policy allows scripts from the gateway only).
"use strict";
(function () {
  var PALETTE = ["#0b6e6e", "#b3261e", "#6a4c93", "#1982c4", "#8ac926", "#ff924c", "#52489c", "#c5283d",
                 "#2b9348", "#f9c74f", "#577590", "#9d4edd"];
  function data(id) { var el = document.getElementById(id); return el ? JSON.parse(el.textContent) : null; }
  // 24 h, like the tables; the series' times are already the site's wall clock (the server adds
  // the [console] timezone's offset: the browser's time-zone data may be older), so drawn as UTC
  function utc(ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); }
  function xaxis(days) {       // 24 h clock; seconds when the readings are minutes apart, dates past 2 days
    var hms = uPlot.fmtDate("{HH}:{mm}:{ss}"), hm = uPlot.fmtDate("{HH}:{mm}"), dm = uPlot.fmtDate("{DD}/{MM}");
    return { values: function (u, splits) {
      var span = splits.length > 1 ? splits[splits.length - 1] - splits[0] : 0;
      var f = days || span > 2 * 86400 ? dm : span < 600 ? hms : hm;
      return splits.map(function (s) { return f(utc(s)); });
    } };
  }
  function width(el) { return Math.max(240, el.clientWidth || 300); }
  function thresholds(el) {
    var lines = [el.dataset.line, el.dataset.line2].filter(function (v) { return v !== undefined; }).map(Number);
    return function (u) {           // dashed alert thresholds across the plot
      var ctx = u.ctx; ctx.save(); ctx.strokeStyle = "#b3261e"; ctx.setLineDash([6, 4]); ctx.lineWidth = 1;
      lines.forEach(function (v) {
        var y = Math.round(u.valToPos(v, "y", true));
        ctx.beginPath(); ctx.moveTo(u.bbox.left, y); ctx.lineTo(u.bbox.left + u.bbox.width, y); ctx.stroke();
      });
      ctx.restore();
    };
  }
  function vital(el, d) {
    var key = el.dataset.key, lo = Number(el.dataset.low), hi = Number(el.dataset.high);
    var ys = d[key];
    var opts = {
      width: width(el), height: 200, legend: { show: false }, cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true, range: function (u, mn, mx) {   // one reading: ten minutes around it
        return mn === mx ? [mn - 300, mx + 300] : [mn, mx]; } }, y: { range: function (u, mn, mx) {
        return [Math.min(lo, mn === null ? lo : mn), Math.max(hi, mx === null ? hi : mx)]; } } },
      tzDate: utc, axes: [xaxis(false), {}],
      series: [{ label: el.dataset.xlabel }, { stroke: "#0b6e6e", width: 2, points: { show: true, size: 6, fill: "#0b6e6e" }, spanGaps: true }],
      hooks: { draw: [thresholds(el)] }
    };
    return new uPlot(opts, [d.t, ys], el);
  }
  function bars(el, d) {
    var key = el.dataset.key, rows = d[key], series = [{ label: el.dataset.xlabel, value: function (u, v) {
      return v === null ? "--" : uPlot.fmtDate("{YYYY}-{MM}-{DD}")(utc(v)); } }];
    d.regions.forEach(function (r, i) {
      series.push({ label: r, stroke: PALETTE[i % PALETTE.length], fill: PALETTE[i % PALETTE.length] + "55",
                    width: 2, points: { show: true, size: 5 } });
    });
    var opts = { width: width(el), height: 240, series: series, scales: { x: { time: true }, y: { range: function (u, mn, mx) {
      return [0, Math.max(1, (mx || 0) + 1)]; } } }, tzDate: utc, axes: [xaxis(true), { incrs: [1, 2, 5, 10, 20, 50, 100] }] };
    return new uPlot(opts, [d.t].concat(rows), el);
  }
  function init() {
    if (typeof uPlot === "undefined") { return; }
    var charts = [];
    document.querySelectorAll(".chart[data-series]").forEach(function (el) {
      var d = data(el.dataset.series);
      if (!d || !d.t || !d.t.length) { el.classList.add("empty"); return; }
      var u = el.classList.contains("bars") ? bars(el, d) : vital(el, d);
      charts.push([u, el]);
      el.dataset.drawn = "1";
    });
    window.addEventListener("resize", function () {
      charts.forEach(function (c) { c[0].setSize({ width: width(c[1]), height: c[0].height }); });
    });
  }
  document.addEventListener("DOMContentLoaded", init);
})();
