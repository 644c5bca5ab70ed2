(function () {
  "use strict";
  var el = SC.el;
  var out = document.getElementById("live-out"), detail = document.getElementById("live-detail");
  var status = document.getElementById("status"), focus = document.getElementById("focus");
  var last = null;
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
    SC.fill(out, last.tokens.map(function (t, i) {
      var span = el("span", {
        "class": "tok" + (t === "" ? " partial" : "") + (last.special[i] ? " special" : ""),
        "data-i": i
      }, [SC.show(t, true)]);
      span.style.background = SC.shade(vals[i], max);
      return span;
    }));
  }
  function showDetail(i) {
    var row = last.latents[i], parts = [el("b", null, [JSON.stringify(last.tokens[i])]), " "];
    if (last.special[i]) parts.push("(special token, not encoded)");
    else if (!row.length) parts.push("no latent fires");
    else {
      row.forEach(function (p, j) {
        if (j) parts.push(" \u00b7 ");
        parts.push(SC.latentLink("latents/", p[0], "#" + p[0]), " " + Number(p[1]).toPrecision(3));
      });
    }
    SC.fill(detail, parts);
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
