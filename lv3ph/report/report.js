// lv3ph report pages: draws the numbers in #lv3ph-data with plotly.js (inlined in the page).
// Sets data-rendered="1" on <body> when every plot is drawn, data-render-error on failure.
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("lv3ph-data").textContent);
  const body = document.body;
  const CONFIG = { responsive: true, displaylogo: false };
  const LIMIT = { color: "#c0392b", dash: "dash", width: 1.5 };
  const SCEN = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  function layout(extra) {
    return Object.assign(
      { margin: { l: 60, r: 20, t: 40, b: 50 }, font: { size: 12 }, hovermode: "closest", legend: { orientation: "h", y: -0.2 } },
      extra,
      { title: Object.assign({ x: 0.01, xanchor: "left", font: { size: 13 } }, (extra || {}).title || {}) }
    );
  }

  function plot(id, traces, lay) {
    const el = document.getElementById(id);
    if (!el) return Promise.resolve();
    return Plotly.react(el, traces, layout(lay), CONFIG);
  }

  function limitLines(axis, values) {
    return values
      .filter((v) => v !== null && v !== undefined)
      .map((v) =>
        axis === "x"
          ? { type: "line", xref: "x", yref: "paper", x0: v, x1: v, y0: 0, y1: 1, line: LIMIT }
          : { type: "line", xref: "paper", yref: "y", x0: 0, x1: 1, y0: v, y1: v, line: LIMIT }
      );
  }

  function finite(a) {
    return (a || []).filter((v) => v !== null && isFinite(v));
  }

  function done(promises) {
    body.dataset.rendered = "0";
    return Promise.all(promises)
      .then(() => {
        body.dataset.rendered = "1";
      })
      .catch((e) => {
        body.dataset.renderError = String(e);
        console.error(e);
      });
  }

  // ------------------------------------------------------------------ study: comparison over scenarios
  function drawCompare() {
    const c = D.compare;
    const y = c.scenarios;
    const h = Math.max(320, 24 * y.length + 140);
    const yaxis = { automargin: true, autorange: "reversed", tickfont: { size: 10 } };
    const partColours = { "phase conductors": "#4c72b0", neutral: "#9ecae1", earth: "#55a868" };
    const losses = Object.keys(c.losses).map((k) => ({
      type: "bar", orientation: "h", name: k, y: y, x: c.losses[k], marker: { color: partColours[k] },
      hovertemplate: "%{y}<br>" + k + ": %{x:.3f} kWh<extra></extra>",
    }));
    const market = [
      { type: "bar", orientation: "h", name: "traded locally (kWh)", y: y, x: c.traded_kwh, marker: { color: "#7a7a7a" } },
    ].concat(
      Object.keys(c.contract_loss).map((m, i) => ({
        type: "bar", orientation: "h", name: "contract loss, " + m + " (kWh)", y: y, x: c.contract_loss[m],
        xaxis: "x2", marker: { color: SCEN[i % SCEN.length] },
      }))
    );
    return [
      plot("cmp-losses", losses, { barmode: "stack", title: { text: "Losses by part (kWh)" }, height: h, yaxis: yaxis }),
      plot(
        "cmp-voltage",
        [
          { type: "scatter", mode: "markers", name: "highest", y: y, x: c.vmax_v, marker: { symbol: "triangle-right", size: 11, color: "#c0392b" } },
          { type: "scatter", mode: "markers", name: "lowest", y: y, x: c.vmin_v, marker: { symbol: "triangle-left", size: 11, color: "#1f6fd1" } },
        ],
        { title: { text: "Phase-to-neutral voltage at customers (V); dashed: limits" }, height: h, yaxis: yaxis, shapes: limitLines("x", [D.limits.v_low, D.limits.v_high]) }
      ),
      plot(
        "cmp-unbalance",
        [
          { type: "bar", orientation: "h", name: "worst PVUR (%)", y: y, x: c.pvur_max_pct, marker: { color: "#8c4a1c" } },
          { type: "bar", orientation: "h", name: "worst VUF (%)", y: y, x: c.vuf_max_pct, marker: { color: "#8a8a8a" } },
        ],
        { barmode: "group", title: { text: "Voltage unbalance (%); dashed: PVUR limit" }, height: h, yaxis: yaxis, shapes: limitLines("x", [D.limits.pvur]) }
      ),
      plot("cmp-market", market, {
        barmode: "group", title: { text: "Traded energy and the loss charged to contracts" }, height: h, yaxis: yaxis,
        grid: { rows: 1, columns: 2, pattern: "independent" }, xaxis: { title: { text: "traded (kWh)" }, domain: [0, 0.45] },
        xaxis2: { title: { text: "contract loss (kWh)" }, domain: [0.55, 1] },
      }),
      plot(
        "cmp-violations",
        [
          { type: "bar", orientation: "h", name: "minutes with a violation", y: y, x: c.violation_minutes, marker: { color: "#c0392b" } },
          { type: "bar", orientation: "h", name: "self-sufficiency (%)", y: y, x: c.self_sufficiency_pct, xaxis: "x2", marker: { color: "#55a868" } },
        ],
        {
          title: { text: "Violations and self-sufficiency" }, height: h, yaxis: yaxis,
          xaxis: { title: { text: "minutes" }, domain: [0, 0.45] }, xaxis2: { title: { text: "%" }, domain: [0.55, 1] },
        }
      ),
    ];
  }

  // ------------------------------------------------------------------ study: one scenario
  function drawMap(m, q) {
    if (!m) {
      return plot("sc-map", [], { title: { text: "no feeder geometry in these results" }, xaxis: { visible: false }, yaxis: { visible: false } });
    }
    const meta = D.quantities[q];
    const vals = m.values[q] || [];
    const colours = meta.colours;
    const nb = colours.length;
    const fin = finite(vals);
    let lo = fin.length ? Math.min.apply(null, fin) : 0;
    let hi = fin.length ? Math.max.apply(null, fin) : 1;
    if (hi <= lo) { lo -= 0.5; hi += 0.5; }
    const bins = colours.map(() => ({ x: [], y: [] }));
    const grey = { x: [], y: [] };
    const mid = { x: [], y: [], v: [], text: [] };
    for (let i = 0; i < m.lines.length; i++) {
      if (m.x1[i] === null || m.x2[i] === null) continue;
      const v = vals[i];
      const b = v === null || v === undefined ? grey : bins[Math.min(nb - 1, Math.max(0, Math.floor(((v - lo) / (hi - lo)) * nb)))];
      b.x.push(m.x1[i], m.x2[i], null);
      b.y.push(m.y1[i], m.y2[i], null);
      mid.x.push((m.x1[i] + m.x2[i]) / 2);
      mid.y.push((m.y1[i] + m.y2[i]) / 2);
      mid.v.push(v);
      mid.text.push(m.lines[i] + ": " + (v === null ? "n/a" : v.toPrecision(4)) + " " + meta.unit);
    }
    const traces = [];
    bins.concat([grey]).forEach((b, i) => {
      if (b.x.length) {
        traces.push({ type: "scatter", mode: "lines", x: b.x, y: b.y, hoverinfo: "skip", showlegend: false, line: { color: i < nb ? colours[i] : "#d0d0d0", width: 3 } });
      }
    });
    const scale = colours.map((c, i) => [i / (nb - 1), c]);
    traces.push({
      type: "scatter", mode: "markers", x: mid.x, y: mid.y, text: mid.text, hoverinfo: "text", showlegend: false,
      marker: { size: 7, opacity: 0.01, color: mid.v, colorscale: scale, cmin: lo, cmax: hi, showscale: true, colorbar: { title: { text: meta.unit }, thickness: 14 } },
    });
    const xs = finite(m.x1.concat(m.x2));
    const span = xs.length ? Math.max.apply(null, xs) - Math.min.apply(null, xs) : 1;
    const dx = 0.008 * span;
    const byPhase = {};
    for (let i = 0; i < m.customers.length; i++) {
      if (m.cx[i] === null) continue;
      const p = m.phase[i];
      byPhase[p] = byPhase[p] || { x: [], y: [], text: [], colour: m.phase_colour[i] };
      const loss = m.loss_kwh[i] === null ? "n/a" : (1000 * m.loss_kwh[i]).toFixed(1) + " Wh";
      byPhase[p].x.push(m.cx[i]);
      byPhase[p].y.push(m.cy[i]);
      byPhase[p].text.push(m.customers[i] + "<br>phase " + p + (m.devices[i] ? "<br>" + m.devices[i] : "") + "<br>allocated loss " + loss);
    }
    Object.keys(byPhase).sort().forEach((p) => {
      const g = byPhase[p];
      traces.push({ type: "scatter", mode: "markers", name: "customer, phase " + p, x: g.x, y: g.y, text: g.text, hoverinfo: "text", marker: { size: 9, color: g.colour, line: { color: "white", width: 1 } } });
    });
    const offsets = { pv: [1, 1], battery: [1, -1], ev: [-1, 1] };
    Object.keys(D.devices).forEach((dev) => {
      const x = [], yy = [];
      for (let i = 0; i < m.customers.length; i++) {
        if (m.cx[i] !== null && m.devices[i].split("+").indexOf(dev) >= 0) {
          x.push(m.cx[i] + offsets[dev][0] * dx);
          yy.push(m.cy[i] + offsets[dev][1] * dx);
        }
      }
      if (x.length) {
        const s = D.devices[dev];
        traces.push({ type: "scatter", mode: "markers", name: s.label, x: x, y: yy, hoverinfo: "skip", marker: { symbol: s.symbol, size: 9, color: s.colour, line: { color: "#333", width: 0.5 } } });
      }
    });
    if (m.ex.length) {
      traces.push({ type: "scatter", mode: "markers", name: "earth electrode", x: m.ex.map((v) => v - dx), y: m.ey.map((v) => v - dx), hoverinfo: "skip", marker: { symbol: "triangle-down", size: 8, color: "#1b7f3b" } });
    }
    if (m.tx.length) {
      traces.push({ type: "scatter", mode: "markers", name: "transformer", x: m.tx, y: m.ty, hoverinfo: "skip", marker: { symbol: "square", size: 14, color: "#c0392b" } });
    }
    const where = m.source === "buscoords" ? "bus coordinates" : "graph layout (no bus coordinates in the model)";
    return plot("sc-map", traces, {
      title: { text: meta.label + " (" + meta.unit + "), " + where }, height: 640,
      xaxis: { visible: false, scaleanchor: "y" }, yaxis: { visible: false }, legend: { orientation: "h", y: -0.02 },
      margin: { l: 10, r: 10, t: 40, b: 10 },
    });
  }

  function drawScenario(i) {
    const s = D.scenarios[i];
    const q = document.getElementById("map-quantity");
    const text = document.getElementById("sc-finding");
    if (text) text.textContent = s.finding || "";
    const notes = document.getElementById("sc-notes");
    if (notes) {
      notes.textContent = "";
      (s.notes || []).forEach((n) => {
        const li = document.createElement("li");
        li.textContent = n;
        notes.appendChild(li);
      });
    }
    const ps = [drawMap(s.map, q ? q.value : "vmax_v")];
    const env = [];
    if (s.envelope) {
      s.envelope.hi.forEach((v, p) => {
        const c = D.phase_colours["abc"[p]] || SCEN[p];
        env.push({ type: "scatter", mode: "markers", name: "highest, phase " + "abc"[p], x: s.envelope.d, y: v, marker: { symbol: "triangle-up", size: 5, color: c } });
        env.push({ type: "scatter", mode: "markers", name: "lowest, phase " + "abc"[p], x: s.envelope.d, y: s.envelope.lo[p], marker: { symbol: "triangle-down", size: 5, color: c, opacity: 0.6 } });
      });
    }
    ps.push(plot("sc-envelope", env, {
      title: { text: "Voltage envelope along the feeder (V); dashed: limits" }, height: 420,
      xaxis: { title: { text: "distance from the transformer (km)" } }, yaxis: { title: { text: "phase-to-neutral voltage (V)" } },
      shapes: limitLines("y", [D.limits.v_low, D.limits.v_high]),
    }));
    const t = s.t;
    ps.push(plot("sc-unbalance", [
      { type: "scatter", mode: "lines", name: "worst PVUR (%)", x: t, y: s.pvur_max_pct, line: { color: "#8c4a1c" } },
      { type: "scatter", mode: "lines", name: "worst VUF (%)", x: t, y: s.vuf_max_pct, line: { color: "#8a8a8a" } },
    ], { title: { text: "Worst unbalance over the feeder; dashed: PVUR limit" }, height: 360, xaxis: { title: { text: "time (h)" } }, yaxis: { title: { text: "%" }, rangemode: "tozero" }, shapes: limitLines("y", [D.limits.pvur]) }));
    const cur = (s.head_current_a || []).map((y, p) => ({ type: "scatter", mode: "lines", name: "phase " + "abc"[p], x: t, y: y, line: { color: D.phase_colours["abc"[p]], width: 1 } }));
    cur.push({ type: "scatter", mode: "lines", name: "neutral", x: t, y: s.head_neutral_current_a, line: { color: D.phase_colours.n, width: 2 } });
    ps.push(plot("sc-currents", cur, { title: { text: "Currents at the feeder head (A)" }, height: 360, xaxis: { title: { text: "time (h)" } }, yaxis: { title: { text: "A" }, rangemode: "tozero" } }));
    const power = [
      ["load_kw", "load", "#444"], ["pv_kw", "PV", "#f2b705"], ["battery_kw", "batteries (charging +)", "#2a9d3f"],
      ["traded_kw", "traded locally", "#9467bd"], ["source_p_kw", "from the grid", "#1f6fd1"],
    ].filter((v) => (s[v[0]] || []).length).map((v) => ({ type: "scatter", mode: "lines", name: v[1], x: t, y: s[v[0]], line: { color: v[2], width: 1.3 } }));
    ps.push(plot("sc-power", power, { title: { text: "Power (kW)" }, height: 360, xaxis: { title: { text: "time (h)" } }, yaxis: { title: { text: "kW" } } }));
    const a = s.allocation;
    if (a) {
      const bars = a.methods.map((m, k) => ({ type: "bar", name: m, x: a.contract, y: a.kwh[k].map((v) => (v === null ? null : 1000 * v)), marker: { color: SCEN[k % SCEN.length] } }));
      ps.push(plot("sc-allocation", bars, { barmode: "group", title: { text: a.contract.length + " of " + a.n + " contracts with the largest loss (Wh), by allocation method" }, height: 380, xaxis: { tickangle: -45, automargin: true }, yaxis: { title: { text: "Wh" } } }));
    } else {
      ps.push(plot("sc-allocation", [], { title: { text: "No P2P contracts in this scenario: no loss allocated to contracts" }, height: 200, xaxis: { visible: false }, yaxis: { visible: false } }));
    }
    return ps;
  }

  function study() {
    const pick = document.getElementById("scenario-picker");
    const q = document.getElementById("map-quantity");
    const current = () => (pick ? Number(pick.value) : 0);
    if (pick) pick.addEventListener("change", () => done(drawScenario(current())));
    if (q) q.addEventListener("change", () => done([drawMap(D.scenarios[current()].map, q.value)]));
    return drawCompare().concat(drawScenario(current()));
  }

  // ------------------------------------------------------------------ hosting
  function hosting() {
    const arr = D.arrangements;
    const names = Object.keys(arr);
    const hist = names.map((n, i) => ({ type: "histogram", name: n, x: arr[n].hosting_kw, opacity: 0.6, marker: { color: SCEN[i % SCEN.length] } }));
    const ecdf = names.map((n, i) => {
      const x = arr[n].hosting_kw;
      return { type: "scatter", mode: "lines", line: { shape: "hv", color: SCEN[i % SCEN.length] }, name: n, x: [0].concat(x), y: [0].concat(x.map((_, k) => (k + 1) / x.length)) };
    });
    const limits = Array.from(new Set([].concat.apply([], names.map((n) => Object.keys(arr[n].binding))))).sort();
    const binding = names.map((n, i) => ({ type: "bar", name: n, x: limits, y: limits.map((l) => arr[n].binding[l] || 0), marker: { color: SCEN[i % SCEN.length] } }));
    return [
      plot("hc-hist", hist, { barmode: "overlay", title: { text: "Hosting capacity per placement" }, xaxis: { title: { text: "kWp installed" } }, yaxis: { title: { text: "placements" } }, height: 380 }),
      plot("hc-ecdf", ecdf, { title: { text: "Share of placements at or below" }, xaxis: { title: { text: "kWp installed" } }, yaxis: { range: [0, 1.02] }, height: 380 }),
      plot("hc-binding", binding, { barmode: "group", title: { text: "Binding limit (placements)" }, height: 340 }),
    ];
  }

  // ------------------------------------------------------------------ fleet
  function fleet() {
    const h = Math.max(300, 22 * D.labels.length + 120);
    return [
      plot("fleet-bar", [{ type: "bar", orientation: "h", y: D.labels, x: D.values, marker: { color: "#4c72b0" }, name: D.kpi }], {
        title: { text: D.kpi + " (" + D.order + " first)" }, height: h, yaxis: { automargin: true, autorange: "reversed" },
      }),
    ];
  }

  const kinds = { study: study, hosting: hosting, fleet: fleet };
  try {
    done(kinds[body.dataset.kind]());
  } catch (e) {
    body.dataset.renderError = String(e);
    console.error(e);
  }
})();
