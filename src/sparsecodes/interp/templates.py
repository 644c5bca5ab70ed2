"""HTML, CSS and JavaScript of the feature browser, as strings (no template engine, no CDN).

Everything works from ``file://``: data reach the pages as ``<script>`` files or inline JSON
(``fetch`` of local JSON is blocked there), and all scripts and styles are relative files.
Only ``live.html`` needs ``sparsecodes serve`` (it POSTs text to ``/api/annotate``).
"""

from __future__ import annotations

STYLE_CSS = """
:root { --fg:#1d1d1f; --muted:#6b6b70; --line:#e3e3e8; --accent:#c2410c; --bg:#fff; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
  background: var(--bg); margin: 0 auto; max-width: 1100px; padding: 16px 20px 60px; }
a { color: #1d4ed8; text-decoration: none; } a:hover { text-decoration: underline; }
h1 { font-size: 20px; margin: 4px 0 2px; } h2 { font-size: 16px; margin: 22px 0 8px; }
.muted { color: var(--muted); } .small { font-size: 12px; }
nav { display: flex; gap: 14px; align-items: baseline; border-bottom: 1px solid var(--line);
  padding-bottom: 8px; margin-bottom: 12px; }
.controls { display: flex; gap: 10px; align-items: center; flex-wrap: wrap; margin: 10px 0; }
input[type=search], textarea { font: inherit; padding: 6px 8px; border: 1px solid #bbb;
  border-radius: 6px; }
input[type=search] { width: 360px; }
textarea { width: 100%; min-height: 90px; }
button { font: inherit; padding: 5px 12px; border-radius: 6px; border: 1px solid #bbb;
  background: #f6f6f8; cursor: pointer; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { cursor: pointer; user-select: none; white-space: nowrap; background: #fafafa;
  position: sticky; top: 0; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
.toks { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
.ctx { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px;
  white-space: pre-wrap; word-break: break-all; padding: 5px 8px; border-bottom: 1px solid
  var(--line); }
.ctx .act { color: var(--muted); display: inline-block; min-width: 58px; font-size: 11px; }
.tok { border-radius: 2px; }
.tok.center { outline: 1.5px solid var(--accent); }
.tok.special { color: #999; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.stat { display: inline-block; margin-right: 18px; }
.stat b { font-variant-numeric: tabular-nums; }
.logit { font-family: ui-monospace, monospace; font-size: 12px; display: flex;
  justify-content: space-between; gap: 8px; }
.pos { color: #15803d; } .neg { color: #b91c1c; }
.band { font-size: 12px; color: var(--muted); margin: 10px 0 2px; }
.dead { color: #999; }
#live-out .tok { cursor: pointer; }
#live-detail { min-height: 40px; }
svg text { font: 10px system-ui, sans-serif; fill: #555; }
"""

INDEX_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="assets/style.css">
</head><body>
<nav><h1>{title}</h1><span class="muted">{subtitle}</span>
<a href="live.html" id="live-link">live text (needs <code>sparsecodes serve</code>)</a></nav>
<div class="controls">
  <input type="search" id="search" placeholder="filter: latent id, explanation or token"
    autofocus>
  <label><input type="checkbox" id="hide-dead"> hide dead latents</label>
  <span id="count" class="muted"></span>
</div>
<table id="latents"><thead><tr>
  <th data-key="id">latent</th><th data-key="density">density</th>
  <th data-key="max">max act</th><th data-key="expl">explanation</th>
  <th data-key="top">top tokens</th><th data-key="logits">promotes</th>
</tr></thead><tbody></tbody></table>
<p><button id="more" hidden>show more</button></p>
<script src="data/index.js"></script>
<script src="assets/index.js"></script>
</body></html>
"""

INDEX_JS = r"""
(function () {
  "use strict";
  var D = window.SC_INDEX, PAGE = 300;
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
  function fmt(x, d) { return x === null || x === undefined ? "" : Number(x).toPrecision(d); }
  function esc(s) {
    return String(s).replace(/[&<>"]/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]; });
  }
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
  function render() {
    var q = search.value.trim().toLowerCase();
    var list = rows.filter(function (r) {
      return matches(r, q) && !(hideDead.checked && r.density === 0); });
    list.sort(cmp);
    var html = [];
    list.slice(0, state.shown).forEach(function (r) {
      html.push("<tr class='" + (r.density === 0 ? "dead" : "") + "' data-id='" + r.id +
        "'><td><a href='latents/" + r.id + ".html'>#" + r.id + "</a></td><td class='num'>" +
        fmt(r.density, 3) + "</td><td class='num'>" + fmt(r.max, 3) + "</td><td>" +
        esc(r.expl || "") + (r.score === null || r.score === undefined ? "" :
        " <span class='muted small'>(" + fmt(r.score, 2) + ")</span>") +
        "</td><td class='toks'>" + esc(r.top) + "</td><td class='toks'>" + esc(r.logits) +
        "</td></tr>");
    });
    tbody.innerHTML = html.join("");
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
  var h = decodeURIComponent(location.hash.slice(1)); if (h) search.value = h;
  render();
})();
"""

LATENT_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>latent {id} - {title}</title>
<link rel="stylesheet" href="../assets/style.css">
</head><body>
<nav><a href="../index.html">&larr; all latents</a>{prev}{next}
<span class="muted">{title}</span></nav>
<h1>latent #{id}</h1>
<div id="expl"></div>
<div id="stats" class="muted"></div>
<div class="grid">
  <div class="card"><h2>activation histogram</h2>{hist_svg}</div>
  <div class="card"><h2>logit effects</h2><div id="logits" class="muted">{no_logits}</div></div>
</div>
<h2>top activations</h2><div id="top"></div>
<h2>samples by activation quantile</h2><div id="samples"></div>
<script>window.SC_LATENT = {data};</script>
<script src="../assets/latent.js"></script>
</body></html>
"""

LATENT_JS = r"""
(function () {
  "use strict";
  var L = window.SC_LATENT, S = L.strings;
  function esc(s) {
    return String(s).replace(/[&<>"]/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]; });
  }
  function show(s) { return s.replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192"); }
  function fmt(x, d) { return Number(x).toPrecision(d); }
  function context(ex) {
    // ex = [token string indices, activations, center index, activation at center]
    var ids = ex[0], acts = ex[1], c = ex[2], max = L.max || 1, out = [];
    out.push("<span class='act'>" + fmt(ex[3], 3) + "</span>");
    for (var i = 0; i < ids.length; i++) {
      if (ids[i] < 0) continue;
      var a = acts[i], alpha = Math.max(0, Math.min(1, a / max));
      var style = a > 0 ? " style='background:rgba(234,88,12," + alpha.toFixed(3) + ")'" : "";
      out.push("<span class='tok" + (i === c ? " center" : "") + "'" + style +
        " title='" + esc(JSON.stringify(S[ids[i]])) + " " + fmt(a, 3) + "'>" +
        esc(show(S[ids[i]])) + "</span>");
    }
    return "<div class='ctx'>" + out.join("") + "</div>";
  }
  if (L.expl) {
    document.getElementById("expl").innerHTML = "<p><b>" + esc(L.expl) + "</b>" +
      (L.score === null || L.score === undefined ? "" :
        " <span class='muted'>(score " + fmt(L.score, 2) + ")</span>") + "</p>";
  }
  document.getElementById("stats").innerHTML =
    "<span class='stat'>density <b>" + fmt(L.density, 3) + "</b></span>" +
    "<span class='stat'>fires on <b>" + L.fires + "</b> of " + L.n_tokens + " tokens</span>" +
    "<span class='stat'>max <b>" + fmt(L.max, 4) + "</b></span>" +
    "<span class='stat'>mean when active <b>" + fmt(L.mean, 4) + "</b></span>";
  var top = document.getElementById("top");
  top.innerHTML = L.top.length ? L.top.map(context).join("") :
    "<p class='muted'>this latent never fired on the tokens seen</p>";
  var samp = [];
  L.samples.forEach(function (band) {
    samp.push("<div class='band'>" + esc(band[0]) + "</div>");
    band[1].forEach(function (ex) { samp.push(context(ex)); });
  });
  document.getElementById("samples").innerHTML = samp.join("") ||
    "<p class='muted'>no samples</p>";
  if (L.logits) {
    var rows = [];
    for (var i = 0; i < Math.max(L.logits.pos.length, L.logits.neg.length); i++) {
      var p = L.logits.pos[i], n = L.logits.neg[i];
      rows.push("<div class='logit'><span class='pos'>" + (p ? esc(JSON.stringify(p[0])) +
        " +" + fmt(p[1], 3) : "") + "</span><span class='neg'>" + (n ? esc(JSON.stringify(n[0])) +
        " " + fmt(n[1], 3) : "") + "</span></div>");
    }
    document.getElementById("logits").innerHTML =
      "<div class='logit muted small'><span>promotes</span><span>suppresses</span></div>" +
      rows.join("");
  }
})();
"""

LIVE_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>live - {title}</title>
<link rel="stylesheet" href="assets/style.css">
</head><body>
<nav><a href="index.html">&larr; all latents</a><span class="muted">{title}</span></nav>
<h1>which latents fire on your text</h1>
<p class="muted small">Runs the model to <code>{hook}</code> and the coder's encoder on the server
(<code>sparsecodes serve</code>); from <code>file://</code> this page cannot work.</p>
<textarea id="text">{example}</textarea>
<div class="controls"><button id="go">annotate</button>
<label>latent <input type="search" id="focus" placeholder="id to highlight"
  style="width:120px"></label><span id="status" class="muted"></span></div>
<div id="live-out" class="ctx"></div>
<h2>token detail</h2><div id="live-detail" class="muted">hover or click a token</div>
<script src="assets/live.js"></script>
</body></html>
"""

LIVE_JS = r"""
(function () {
  "use strict";
  var out = document.getElementById("live-out"), detail = document.getElementById("live-detail");
  var status = document.getElementById("status"), focus = document.getElementById("focus");
  var last = null;
  function esc(s) {
    return String(s).replace(/[&<>"]/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]; });
  }
  function show(s) { return s.replace(/\n/g, "\u21b5\n").replace(/\t/g, "\u2192"); }
  function strength(row) {
    var f = focus.value.trim();
    if (f) {
      for (var i = 0; i < row.length; i++) if (String(row[i][0]) === f) return row[i][1];
      return 0;
    }
    return row.length ? row[0][1] : 0;
  }
  function render() {
    if (!last) return;
    var vals = last.latents.map(strength), max = Math.max.apply(null, vals.concat([1e-9]));
    out.innerHTML = last.tokens.map(function (t, i) {
      var a = vals[i], alpha = Math.max(0, Math.min(1, a / max));
      return "<span class='tok" + (last.special[i] ? " special" : "") + "' data-i='" + i +
        "' style='background:rgba(234,88,12," + alpha.toFixed(3) + ")'>" + esc(show(t)) +
        "</span>";
    }).join("");
  }
  function showDetail(i) {
    var row = last.latents[i];
    detail.innerHTML = "<b>" + esc(JSON.stringify(last.tokens[i])) + "</b> " +
      (last.special[i] ? "(special token, not encoded)" : row.length ? row.map(function (p) {
        return "<a href='latents/" + p[0] + ".html'>#" + p[0] + "</a> " + p[1].toPrecision(3);
      }).join(" &middot; ") : "no latent fires");
  }
  out.addEventListener("mouseover", function (e) {
    var i = e.target.dataset && e.target.dataset.i; if (i !== undefined) showDetail(+i); });
  out.addEventListener("click", function (e) {
    var i = e.target.dataset && e.target.dataset.i;
    if (i !== undefined && last.latents[+i].length) {
      focus.value = String(last.latents[+i][0][0]); render(); showDetail(+i); }
  });
  focus.addEventListener("input", render);
  function go() {
    status.textContent = "running...";
    fetch("api/annotate", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: document.getElementById("text").value }) })
      .then(function (r) { return r.json().then(function (j) { return [r.ok, j]; }); })
      .then(function (res) {
        if (!res[0]) throw new Error(res[1].error || "request failed");
        last = res[1]; status.textContent = last.tokens.length + " tokens"; render();
      })
      .catch(function (e) { status.textContent = "error: " + e.message; });
  }
  document.getElementById("go").addEventListener("click", go);
  if (location.protocol !== "file:") go();
  else status.textContent = "open this page through `sparsecodes serve` to annotate text";
})();
"""

NO_INDEX_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="assets/style.css"></head><body>
<nav><h1>{title}</h1></nav>
<p>No feature browser was built for this coder. Build one with
<code>sparsecodes browse SAE_DIR -o SAE_DIR/site</code> and serve it with
<code>sparsecodes serve SAE_DIR</code>.</p>
<p><a href="live.html">Annotate your own text &rarr;</a></p>
</body></html>
"""
