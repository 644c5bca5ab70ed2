(function () {
  "use strict";
  var L = window.SC_LATENT, S = L.strings, el = SC.el, fmt = SC.fmt;
  function context(ex) {
    // ex = [indices into S (-1: off the window), activations, center index, activation at center]
    var ids = ex[0], acts = ex[1], c = ex[2], out = [el("span", { "class": "act" }, [fmt(ex[3], 3)])];
    for (var i = 0; i < ids.length; i++) {
      if (ids[i] < 0) continue;
      var a = acts[i], span = SC.token(S[ids[i]], a, i === c ? "center" : "");
      if (a > 0) span.style.background = SC.shade(a, L.max);
      out.push(span);
    }
    return el("div", { "class": "ctx" }, out);
  }
  var expl = document.getElementById("expl");
  if (L.expl) {
    var p = [el("b", null, [L.expl])];
    if (L.score !== null && L.score !== undefined) {
      p.push(" ", el("span", { "class": "muted" }, ["(score " + fmt(L.score, 2) + ")"]));
    }
    SC.fill(expl, [el("p", null, p)]);
  }
  function stat(label, value, rest) {
    return el("span", { "class": "stat" }, [label + " ", el("b", null, [value]), rest || ""]);
  }
  SC.fill(document.getElementById("stats"), [
    stat("density", fmt(L.density, 3)),
    stat("fires on", String(L.fires), " of " + L.n_tokens + " tokens"),
    stat("max", fmt(L.max, 4)),
    stat("mean when active", fmt(L.mean, 4))
  ]);
  SC.fill(document.getElementById("top"), L.top.length ? L.top.map(context) :
    [el("p", { "class": "muted" }, ["this latent never fired on the tokens seen"])]);
  var samp = [];
  L.samples.forEach(function (band) {
    samp.push(el("div", { "class": "band" }, [band[0]]));
    band[1].forEach(function (ex) { samp.push(context(ex)); });
  });
  SC.fill(document.getElementById("samples"), samp.length ? samp :
    [el("p", { "class": "muted" }, ["no samples"])]);
  if (L.logits) {
    var rows = [el("div", { "class": "logit muted small" },
      [el("span", null, ["promotes"]), el("span", null, ["suppresses"])])];
    for (var i = 0; i < Math.max(L.logits.pos.length, L.logits.neg.length); i++) {
      var pos = L.logits.pos[i], neg = L.logits.neg[i];
      rows.push(el("div", { "class": "logit" }, [
        el("span", { "class": "pos" }, [pos ? JSON.stringify(pos[0]) + " +" + fmt(pos[1], 3) : ""]),
        el("span", { "class": "neg" }, [neg ? JSON.stringify(neg[0]) + " " + fmt(neg[1], 3) : ""])
      ]));
    }
    SC.fill(document.getElementById("logits"), rows);
  }
})();
