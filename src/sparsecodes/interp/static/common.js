// Shared by every page of the feature browser. Pages are built from data with createElement,
// textContent and setAttribute only: nothing taken from the data is ever parsed as HTML, so a
// token, an explanation or a title can hold any character (', ", <, &) and shows literally.
(function () {
  "use strict";
  // el("span", {class: "tok", title: s}, ["text", node]): attributes are set with setAttribute
  // (the value is never parsed), children are nodes or strings (added as text nodes).
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v !== null && v !== undefined && v !== false) e.setAttribute(k, String(v));
      });
    }
    append(e, children);
    return e;
  }
  function append(e, children) {
    (children || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      e.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    });
    return e;
  }
  // replace the children of `e` (nothing is parsed as HTML)
  function fill(e, children) {
    while (e.firstChild) e.removeChild(e.firstChild);
    return append(e, children);
  }
  function fmt(x, d) {
    return x === null || x === undefined ? "" : Number(x).toPrecision(d);
  }
  // newline and tab made visible; `breaks` keeps the line break after the arrow
  function show(s, breaks) {
    return String(s).replace(/\n/g, breaks ? "\u21b5\n" : "\u21b5").replace(/\t/g, "\u2192");
  }
  // background for an activation a of at most max (orange, transparent at 0)
  function shade(a, max) {
    var alpha = Math.max(0, Math.min(1, a / (max || 1)));
    return "rgba(234,88,12," + alpha.toFixed(3) + ")";
  }
  // one token: its display string as text, the raw string (JSON-quoted) and value as title
  function token(s, value, extraClass) {
    var span = el("span", {
      "class": "tok" + (s === "" ? " partial" : "") + (extraClass ? " " + extraClass : ""),
      title: JSON.stringify(s) + (value === null || value === undefined ? "" : " " + fmt(value, 3))
    }, [show(s)]);
    return span;
  }
  // link to a latent's page; the id is forced to a number
  function latentLink(prefix, id, text) {
    return el("a", { href: prefix + String(Number(id)) + ".html" }, [text]);
  }
  window.SC = { el: el, append: append, fill: fill, fmt: fmt, show: show, shade: shade,
    token: token, latentLink: latentLink };
})();
