(function () {
  "use strict";
  var D = window.SC_INDEX, PAGE = 300, el = SC.el, fmt = SC.fmt;
  var cols = D.columns, rows = D.rows.map(function (r) {
    var o = {}; cols.forEach(function (c, i) { o[c] = r[i]; });
    o.hay = (String(o.expl || "") + " \u0001 " + o.top + " \u0001 " + o.logits).toLowerCase();
    return o;
  });
  var state = { key: "id", dir: 1, shown: PAGE };
  var tbody = document.querySelector("#latents tbody");
  var search = document.getElementById("search");
  var hideDead = document.getElementById("hide-dead");
  var more = document.getElementById("more");
  function matches(r, q) {
    if (!q) return true;
    var m = /^#?(\d+)$/.exec(q);
    if (m && r.id === Number(m[1])) return true;
    return r.hay.indexOf(q) >= 0;
  }
  function cmp(a, b) {
    var k = state.key, x = a[k], y = b[k];
    if (k === "expl") { x = x || "\uffff"; y = y || "\uffff"; }
    if (x < y) return -state.dir; if (x > y) return state.dir;
    return a.id - b.id;
  }
  function row(r) {
    var expl = [r.expl || ""];
    if (r.score !== null && r.score !== undefined) {
      expl.push(" ", el("span", { "class": "muted small" }, ["(" + fmt(r.score, 2) + ")"]));
    }
    return el("tr", { "class": r.density === 0 ? "dead" : "", "data-id": Number(r.id) }, [
      el("td", null, [SC.latentLink("latents/", r.id, "#" + r.id)]),
      el("td", { "class": "num" }, [fmt(r.density, 3)]),
      el("td", { "class": "num" }, [fmt(r.max, 3)]),
      el("td", null, expl),
      el("td", { "class": "toks" }, [r.top]),
      el("td", { "class": "toks" }, [r.logits])
    ]);
  }
  function render() {
    var q = search.value.trim().toLowerCase();
    var list = rows.filter(function (r) {
      return matches(r, q) && !(hideDead.checked && r.density === 0); });
    list.sort(cmp);
    SC.fill(tbody, list.slice(0, state.shown).map(row));
    document.getElementById("count").textContent = "showing " +
      Math.min(state.shown, list.length) + " of " + list.length + " (" + rows.length + " latents)";
    more.hidden = list.length <= state.shown;
    document.querySelectorAll("th").forEach(function (th) {
      th.className = th.dataset.key === state.key ? (state.dir > 0 ? "sorted-asc" : "sorted-desc") : "";
    });
  }
  document.querySelectorAll("th").forEach(function (th) {
    th.addEventListener("click", function () {
      var k = th.dataset.key;
      if (state.key === k) state.dir = -state.dir;
      else { state.key = k; state.dir = (k === "id" || k === "expl" || k === "top" ||
        k === "logits") ? 1 : -1; }
      render();
    });
  });
  search.addEventListener("input", function () { state.shown = PAGE; render(); });
  hideDead.addEventListener("change", function () { state.shown = PAGE; render(); });
  more.addEventListener("click", function () { state.shown += PAGE; render(); });
  if (location.protocol === "file:") {
    var l = document.getElementById("live-link"); if (l) l.title = "run: sparsecodes serve SAE_DIR";
  }
  // attribution-graph pages registered with this site (data/graphs.js, by sparsecodes graph)
  var graphLinks = document.getElementById("graph-links"), graphs = window.SC_GRAPHS || [];
  if (graphLinks && graphs.length) {
    SC.fill(graphLinks, [graphs.length === 1 ? "graph: " : "graphs: "].concat(graphs.filter(
      function (g) { return typeof g.href === "string" && !/^[a-z][a-z0-9+.-]*:/i.test(g.href); }
    ).map(function (g, i) {
      var t = String(g.title || g.href);
      return el("a", { href: g.href, title: t, "class": "graph-link" },
        [(i ? " " : "") + (t.length > 60 ? t.slice(0, 57) + "..." : t)]);
    })));
  }
  var h = decodeURIComponent(location.hash.slice(1)); if (h) search.value = h;
  render();
})();
