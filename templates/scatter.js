/* reportgen: partials/scatter.html.jinja2's map (data: figures/scatter.py) */
(function () {
"use strict";
var doc = document;
function ints(b64, size) {  // base64 -> little-endian unsigned ints
  var s = atob(b64), a = new [0, Uint8Array, Uint16Array, 0, Uint32Array][size](s.length / size), i, k;
  for (i = 0; i < a.length; i++) for (k = 0; k < size; k++) a[i] += s.charCodeAt(size * i + k) * 256 ** k;
  return a;
}
[].forEach.call(doc.querySelectorAll("figure.scatter"), function (fig) {
  var $ = fig.querySelector.bind(fig), i, j, o;
  var d = JSON.parse($(".scatter-data").textContent), thumbs = JSON.parse($(".scatter-thumbs").textContent);
  var n = d.n, X = ints(d.x, 2), Y = ints(d.y, 2), T = ints(d.truth, d.size), P = ints(d.pred, d.size);
  var colours = ints(d.colours, 4), unknown = colours.length - 1, shared = ints(d.shared, 1);
  var rest = d.names.split("\n"), names = [], prev = "", wrong = [], order = new Uint32Array(n), bad = new Uint8Array(n), seed = 1;
  for (i = 0; i < n; i++) {
    prev = names[i] = prev.slice(0, shared[i]) + rest[i];
    order[i] = i;
    if (T[i] !== unknown && T[i] !== P[i]) { bad[i] = 1; wrong.push(i); }
  }
  for (i = n - 1; i > 0; i--) {  // fixed shuffle: no class on top
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    j = seed % (i + 1); o = order[i]; order[i] = order[j]; order[j] = o;
  }
  var cv = $("canvas"), tip = $(".scatter-tip"), by = $("input:checked");
  var on = cv.addEventListener.bind(cv), sx = new Float32Array(n), sy = new Float32Array(n), w, h, shown = -1;
  var r = n > 20000 ? 1.5 : n > 2000 ? 2 : 3, step = -1, width = -1, last, queued;
  by = by ? by.value : "pred";

  function draw() {  // one scale for both axes; dots into the pixels, mistakes last
    w = cv.clientWidth;
    var ex = Math.max(d.extent[0], 1), ey = Math.max(d.extent[1], 1), dpr = devicePixelRatio || 1, x, y;
    h = Math.round(Math.max(220, Math.min(w * 0.75, 560, (w - 20) * ey / ex + 20)));
    cv.style.height = h + "px";
    var s = Math.min((w - 20) / ex, (h - 20) / ey), ox = (w - s * d.extent[0]) / 2, oy = (h + s * d.extent[1]) / 2;
    cv.dataset.view = [s, ox, oy];  // (x, y) at (ox + s x, oy - s y)
    var W = cv.width = Math.round(w * dpr), H = cv.height = Math.round(h * dpr), ctx = cv.getContext("2d");
    var img = ctx.createImageData(W, H), px = new Uint32Array(img.data.buffer), rd = Math.max(1, Math.round(r * dpr));
    var disc = [], ring = [], C = by === "truth" ? T : P, R = rd + 2, q, fg = getComputedStyle(fig).color.match(/\d+/g);
    for (y = -R; y <= R; y++) for (x = -R; x <= R; x++) {
      (q = Math.hypot(x, y)) <= rd + 0.5 ? disc.push(y * W + x) : q > R - 1 && q <= R && ring.push(y * W + x);
    }
    fg = 255 << 24 | fg[2] << 16 | fg[1] << 8 | fg[0];  // RGBA as a uint32
    function dot(i, offsets, c) {
      var at = Math.round(sy[i] * dpr) * W + Math.round(sx[i] * dpr);
      for (var k = 0; k < offsets.length; k++) px[at + offsets[k]] = c;
    }
    for (i = 0; i < n; i++) { sx[i] = ox + s * X[i]; sy[i] = oy - s * Y[i]; }
    for (i = 0; i < n; i++) if (!bad[o = order[i]]) dot(o, disc, colours[C[o]]);
    wrong.forEach(function (i) { dot(i, disc, colours[C[i]]); dot(i, ring, fg); });
    ctx.putImageData(img, 0, 0);
    show(shown);
  }
  function show(i, say) {  // point i's tooltip (-1: none)
    tip.hidden = (shown = i) < 0;
    if (i < 0) return;
    var y, lines = [names[i], "Predicted: " + d.labels[P[i]] + (bad[i] ? " ✗ mistake" : "")];
    if (T[i] !== unknown) lines.splice(1, 0, "Truth: " + d.labels[T[i]]);
    tip.textContent = "";
    lines.forEach(function (text, k) { tip.appendChild(doc.createElement(k ? "div" : "strong")).textContent = text; });
    if (thumbs[i]) tip.appendChild(doc.createElement("img")).src = thumbs[i];
    y = sy[i] + 12 + tip.offsetHeight > h ? Math.max(0, sy[i] - 12 - tip.offsetHeight) : sy[i] + 12;
    tip.style.left = Math.max(0, Math.min(sx[i] + 12, w - tip.offsetWidth)) + "px";  // CSSOM: CSP-safe
    tip.style.top = y + "px";
    if (say) $(".scatter-said").textContent = lines.join(". ");
  }
  function go(i) {  // its card, else the images table filtered to it
    var id = d.anchors[i], el = id && doc.getElementById(id), input, p;
    if (!el) {
      input = doc.querySelector("input.filter[data-table='images-table']");
      if (!input) return;
      el = input.closest(".images-table");
      input.value = names[i];
      input.dispatchEvent(new Event("input"));
    }
    while ((p = el.closest("details:not([open])"))) p.open = true;
    if (!input) location.hash = id;
    el.scrollIntoView();
  }
  function at(e) {  // nearest point within 8 px
    var box = cv.getBoundingClientRect(), x = e.clientX - box.left, y = e.clientY - box.top, best = -1, most = 8;
    for (var i = 0, dd; i < n; i++) if ((dd = Math.hypot(sx[i] - x, sy[i] - y)) <= most) { most = dd; best = i; }
    return best;
  }
  on("pointermove", function (e) {
    last = e;
    if (!queued) queued = requestAnimationFrame(function () { queued = 0; i = at(last); if (i !== shown) show(i); });
  });
  on("pointerleave", show.bind(0, -1, 0));
  on("blur", show.bind(0, -1, 0));
  on("click", function (e) { i = at(e); if (i >= 0) go(i); });
  on("keydown", function (e) {  // arrows step through the mistakes
    var count = wrong.length || n, k = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
    if (k && count) {
      e.preventDefault();
      step = step < 0 && k < 0 ? count - 1 : (step + k + count) % count;
      show(wrong.length ? wrong[step] : step, 1);
    } else if (e.key === "Enter" && shown >= 0) go(shown);
  });
  fig.addEventListener("change", function (e) { by = e.target.value; draw(); });  // colour by
  new ResizeObserver(function () {  // when shown (folded: no width) or resized
    if (cv.clientWidth === width || !cv.clientWidth) return;
    var t = performance.now();
    draw();
    if (width < 0) cv.dataset.drawMs = (performance.now() - t).toFixed(1);
    width = cv.clientWidth;
  }).observe(fig);
});
})();
