// The steer box of a latent page: continue a prompt with and without this latent's decoder atom
// added (or the latent clamped), through `sparsecodes serve` (POST ../api/steer). Built with
// createElement/textContent only (common.js): generated text shows literally.
(function () {
  "use strict";
  var box = document.getElementById("steer");
  if (!box || !window.SC_LATENT) return;
  var el = SC.el, latent = Number(window.SC_LATENT.id);
  if (location.protocol === "file:") {
    SC.fill(box, ["Steering runs the model: open this page through `sparsecodes serve`."]);
    return;
  }
  function field(id, label, value, width) {
    return el("label", null, [label + " ",
      el("input", { type: "text", id: id, value: value, style: "width:" + width + "px" })]);
  }
  var prompt = el("textarea", { id: "steer-prompt" }, ["The weather today is"]);
  var status = el("span", { id: "steer-status", "class": "muted" });
  var button = el("button", { id: "steer-go" }, ["steer"]);
  var out = el("div", { id: "steer-out" });
  SC.fill(box, [prompt, el("div", { "class": "controls" }, [
    field("steer-alpha", "alpha", "8", 60), field("steer-clamp", "or clamp to", "", 60),
    field("steer-n", "new tokens", "20", 40), button, status]), out]);
  function column(title, text) {
    return el("div", { "class": "card" }, [el("h2", null, [title]),
      el("div", { "class": "ctx steer-text" }, [SC.show(text, true)])]);
  }
  function changes(title, rows) {
    return el("div", null, [el("b", null, [title + ": "])].concat(rows.map(function (r, i) {
      return el("span", { "class": "logit", title: SC.fmt(r[2], 3) + " \u2192 " + SC.fmt(r[3], 3) },
        [(i ? " \u00b7 " : "") + JSON.stringify(r[0]) + " " + (r[1] >= 0 ? "+" : "") + SC.fmt(r[1], 3)]);
    })));
  }
  function render(res) {
    SC.fill(out, [
      el("p", { "class": "muted" }, [res.edit + " at " + res.hook]),
      el("div", { "class": "grid" }, [column("unsteered", res.unsteered), column("steered", res.steered)]),
      el("h2", null, ["next-token logits"]),
      changes("rose most", res.top_up), changes("fell most", res.top_down)
    ]);
  }
  function go() {
    var body = { prompt: prompt.value, latent: latent,
      alpha: document.getElementById("steer-alpha").value,
      clamp: document.getElementById("steer-clamp").value,
      max_new_tokens: document.getElementById("steer-n").value };
    status.textContent = "running...";
    fetch("../api/steer", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) })
      .then(function (r) { return r.json().then(function (j) { return [r.ok, j]; }); })
      .then(function (res) {
        if (!res[0]) throw new Error(res[1].error || "request failed");
        status.textContent = ""; render(res[1]);
      })
      .catch(function (e) { status.textContent = "error: " + e.message; });
  }
  button.addEventListener("click", go);
})();
