// Draws an attribution graph (schema sparsecodes.attribution_graph/1) as SVG. Like every page of
// the browser, nothing from the data is parsed as HTML: elements are made with createElementNS
// and setAttribute, text with textContent.
(function () {
  "use strict";
  var G = window.SC_GRAPH, el = SC.el, fmt = SC.fmt;
  var NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    var e = document.createElementNS(NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  var T = G.tokens.length, L = G.n_layers;
  var colW = Math.max(70, Math.min(140, 1400 / Math.max(T, 1))), rowH = 46, pad = 40;
  var W = pad * 2 + colW * T, H = pad * 2 + rowH * (L + 2) + 30;
  // cells: (layer, pos) -> nodes, strongest influence first
  var cells = {};
  G.nodes.forEach(function (n, i) {
    n.index = i;
    var key = n.layer + ":" + n.pos;
    (cells[key] = cells[key] || []).push(n);
  });
  Object.keys(cells).forEach(function (key) {
    var c = cells[key];
    c.sort(function (a, b) { return (b.influence || 0) - (a.influence || 0); });
    c.forEach(function (n, j) {
      var step = Math.min(14, (colW - 16) / Math.max(c.length, 1));
      n.x = pad + n.pos * colW + colW / 2 + (j - (c.length - 1) / 2) * step;
      n.y = pad + (L - n.layer) * rowH;
    });
  });
  var s = G.scores || {};
  SC.fill(document.getElementById("summary"), [
    el("div", null, ["prompt: ", el("b", null, [G.prompt])]),
    el("div", null, ["target: ", el("b", null, [JSON.stringify(G.target.token)]),
      G.target.contrast_token === null || G.target.contrast_token === undefined ? "" :
        " minus " + JSON.stringify(G.target.contrast_token),
      " = " + fmt(G.target.value, 4) + " at position " + G.target.position]),
    el("div", null, ["replacement score " + fmt(s.replacement, 3) + ", completeness " +
      fmt(s.completeness, 3) + " (pruned: " + fmt(s.pruned_replacement, 3) + ", " +
      fmt(s.pruned_completeness, 3) + "); " + G.nodes.length + " nodes, " + G.edges.length +
      " edges shown"])
  ]);
  var root = svg("svg", { "class": "graph", width: W, height: H, viewBox: "0 0 " + W + " " + H });
  for (var l = -1; l <= L; l++) {
    var y = pad + (L - l) * rowH;
    root.appendChild(svg("line", { x1: pad, x2: W - pad, y1: y, y2: y, stroke: "#f0f0f0" }));
    root.appendChild(svg("text", { x: 4, y: y + 4, "font-size": 10, fill: "#999" },
      l < 0 ? "emb" : l === L ? "out" : "L" + l));
  }
  G.tokens.forEach(function (t, p) {
    root.appendChild(svg("text", { x: pad + p * colW + colW / 2, y: H - 12, "font-size": 11,
      "text-anchor": "middle", "class": "toklabel" }, SC.show(t)));
  });
  var maxW = 0;
  G.edges.forEach(function (e) { maxW = Math.max(maxW, Math.abs(e[2])); });
  var edgeLayer = svg("g", {}), nodeLayer = svg("g", {});
  root.appendChild(edgeLayer);
  root.appendChild(nodeLayer);
  G.edges.forEach(function (e) {
    var a = G.nodes[e[0]], b = G.nodes[e[1]], w = e[2];
    edgeLayer.appendChild(svg("line", {
      "class": "edge", x1: a.x, y1: a.y, x2: b.x, y2: b.y,
      stroke: w >= 0 ? "#2563eb" : "#dc2626", "stroke-opacity": 0.55,
      "stroke-width": (0.3 + 5 * Math.abs(w) / (maxW || 1)).toFixed(2),
      "data-source": e[0], "data-target": e[1]
    }));
  });
  var colours = { feature: "#f59e0b", error: "#9ca3af", embedding: "#10b981", target: "#7c3aed" };
  var details = document.getElementById("details");
  function describe(n) {
    var rows = [["node", n.id], ["kind", n.kind], ["layer", n.layer], ["position", n.pos],
      ["token", JSON.stringify(G.tokens[n.pos])]];
    if (n.feature !== null && n.feature !== undefined) rows.push(["feature", n.feature]);
    if (n.activation !== null && n.activation !== undefined) rows.push(["activation", fmt(n.activation, 4)]);
    if (n.input !== null && n.input !== undefined) rows.push(["input", fmt(n.input, 4)]);
    rows.push(["influence", fmt(n.influence, 4)]);
    var inc = G.edges.filter(function (e) { return e[1] === n.index; })
      .sort(function (a, b) { return Math.abs(b[2]) - Math.abs(a[2]); }).slice(0, 8);
    var out = [];
    rows.forEach(function (r) { out.push(el("dt", null, [r[0]]), el("dd", null, [String(r[1])])); });
    if (inc.length) {
      out.push(el("dt", null, ["top inputs"]), el("dd", null, inc.map(function (e) {
        return el("div", null, [G.nodes[e[0]].id + ": " + fmt(e[2], 3)]);
      })));
    }
    return el("dl", { "data-node": n.id }, out);
  }
  G.nodes.forEach(function (n) {
    var attrs = { "class": "node", "data-id": n.id, fill: colours[n.kind] || "#000" };
    var shape;
    if (n.kind === "error" || n.kind === "embedding") {
      shape = svg("rect", Object.assign(attrs, { x: n.x - 5, y: n.y - 5, width: 10, height: 10 }));
    } else {
      shape = svg("circle", Object.assign(attrs, { cx: n.x, cy: n.y, r: n.kind === "target" ? 8 : 5 }));
    }
    shape.appendChild(svg("title", {}, n.id + (n.activation ? " act " + fmt(n.activation, 3) : "")));
    shape.addEventListener("click", function () {
      Array.prototype.forEach.call(root.querySelectorAll(".node.selected"), function (x) {
        x.classList.remove("selected");
      });
      shape.classList.add("selected");
      SC.fill(details, [describe(n)]);
      if (n.href) window.location.href = n.href;
    });
    nodeLayer.appendChild(shape);
  });
  SC.fill(document.getElementById("canvas"), [root]);
  // head scores: the share of the kept nodes' inputs (influence-weighted) through each head
  var HD = G.heads, hbox = document.getElementById("heads");
  if (HD && hbox) {
    var flat = [];
    HD.scores.forEach(function (row, l) {
      row.forEach(function (v, h) {
        flat.push({ l: l, h: h, v: v, t: HD.target_only ? HD.target_only[l][h] : null });
      });
    });
    var ranked = flat.slice().sort(function (a, b) { return b.v - a.v; });
    var top = ranked.slice(0, 10), hmax = ranked.length ? ranked[0].v : 1;
    var list = el("table", { "class": "head-top" }, [el("tr", null, [
      el("th", null, ["head"]), el("th", null, ["score"]), el("th", null, ["target only"])])]
      .concat(top.map(function (c) {
        return el("tr", { "data-head": c.l + "." + c.h }, [el("td", null, ["L" + c.l + ".H" + c.h]),
          el("td", { "class": "num" }, [fmt(c.v, 3)]), el("td", { "class": "num" }, [fmt(c.t, 3)])]);
      })));
    var grid = el("table", { "class": "head-grid" });
    var header = [el("th", null, [""])];
    for (var hh = 0; hh < HD.n_heads; hh++) header.push(el("th", null, ["H" + hh]));
    grid.appendChild(el("tr", null, header));
    for (var ll = HD.n_layers - 1; ll >= 0; ll--) {
      var cellsRow = [el("th", null, ["L" + ll])];
      HD.scores[ll].forEach(function (v, h) {
        var td = el("td", { title: "L" + ll + ".H" + h + ": " + fmt(v, 3) });
        td.style.background = "rgba(124, 58, 237, " + Math.max(0, Math.min(1, v / (hmax || 1))).toFixed(3) + ")";
        cellsRow.push(td);
      });
      grid.appendChild(el("tr", null, cellsRow));
    }
    SC.fill(hbox, [el("p", { "class": "small" }, ["share of the kept nodes' inputs (weighted by " +
      "their influence on the target) passing through each head, summing to 1; 'target only': " +
      "the target's own input"]), list, grid]);
  }
})();
