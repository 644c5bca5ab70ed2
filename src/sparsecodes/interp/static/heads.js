// Attention-output coders: this latent's share per head (decoder norm per head block) as bars,
// and, for each top activation, the source tokens that wrote it (direct feature attribution,
// summed over heads; offset 0 is the token itself). Built with SC.el (textContent only).
(function () {
  "use strict";
  var L = window.SC_LATENT, H = L.heads, el = SC.el, fmt = SC.fmt;
  var box = document.getElementById("heads");
  if (!H || !box) return;
  var bars = H.shares.map(function (share, h) {
    var pct = Math.max(0, Math.min(1, Number(share))) * 100;
    var fill = el("span", { "class": "head-fill" });
    fill.style.width = pct.toFixed(1) + "%";
    return el("div", { "class": "head-row", title: "head " + h + ": " + fmt(share, 3) }, [
      el("span", { "class": "head-name" }, ["H" + h]),
      el("span", { "class": "head-bar" }, [fill]),
      el("span", { "class": "head-val" }, [fmt(share, 3)])
    ]);
  });
  var parts = [el("h2", null, ["share per head"]),
    el("p", { "class": "muted small" }, ["decoder norm per head block, summing to 1"]),
    el("div", { "class": "heads" }, bars)];
  if (H.sources) {
    parts.push(el("h2", null, ["sources of the top activations"]));
    parts.push(el("p", { "class": "muted small" }, [
      "per top activation: source tokens by direct feature attribution (summed over heads); " +
      "the number in brackets is the source position relative to the activating token"]));
    H.sources.forEach(function (rows, j) {
      var act = L.top[j] ? L.top[j][3] : null;
      var line = [el("span", { "class": "act" }, [fmt(act, 3)])];
      rows.forEach(function (r) {
        line.push(el("span", { "class": "src" + (r[1] < 0 ? " neg" : "") }, [
          el("span", { "class": "tok" }, [SC.show(r[0])]),
          el("span", { "class": "muted small" }, [" [" + r[2] + "] " + fmt(r[1], 3)])
        ]));
      });
      parts.push(el("div", { "class": "ctx sources" }, line));
    });
  }
  SC.fill(box, parts);
})();
