/* reportgen: the interactive scatter of partials/scatter.html.jinja2 (figures/scatter.py's data); only on pages with one. */
(function () {
  "use strict";
  var doc = document, TAU = 2 * Math.PI, PAD = 10, GREY = [138, 144, 150];
  var BASE = ["4e79a7", "f28e2b", "e15759", "76b7b2", "59a14f", "edc948", "b07aa1", "ff9da7", "9c755f", "bab0ac"];
  function colour(k) {  // Tableau 10, then golden-angle hues: mid tones, readable on the light and the dark page
    if (k < BASE.length) return [0, 2, 4].map(function (i) { return parseInt(BASE[k].slice(i, i + 2), 16); });
    var hue = (k * 137.508) % 360 / 60, x = 0.6 * (1 - Math.abs(hue % 2 - 1));
    return [[0.6, x, 0], [x, 0.6, 0], [0, 0.6, x], [0, x, 0.6], [x, 0, 0.6], [0.6, 0, x]][Math.floor(hue) % 6]
      .map(function (v) { return Math.round((v + 0.25) * 255); });
  }
  function bytes(b64) {
    var s = atob(b64), a = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);
    return a;
  }
  function ints(b64, wide) {  // little-endian uint16, whatever the machine's byte order
    var b = bytes(b64);
    if (!wide) return b;
    var a = new Uint16Array(b.length / 2);
    for (var i = 0; i < a.length; i++) a[i] = b[2 * i] | b[2 * i + 1] << 8;
    return a;
  }
  function pack(c) { return (255 << 24 | c[2] << 16 | c[1] << 8 | c[0]) >>> 0; }  // RGBA bytes as one uint32

  Array.prototype.forEach.call(doc.querySelectorAll("figure.scatter"), function (fig) {
    var t0 = performance.now(), i;
    var d = JSON.parse(fig.querySelector(".scatter-data").textContent);
    var thumbs = JSON.parse(fig.querySelector(".scatter-thumbs").textContent);
    var n = d.n, X = ints(d.x, true), Y = ints(d.y, true), T = ints(d.truth, d.wide), P = ints(d.pred, d.wide);
    var unknown = d.wide ? 65535 : 255, shared = bytes(d.shared), rest = d.names.split("\n"), names = [], prev = "";
    for (i = 0; i < n; i++) prev = names[i] = prev.slice(0, shared[i]) + rest[i];  // front-coded names
    var anchors = {}, wrong = [], order = new Uint32Array(n), bad = new Uint8Array(n), seed = 1;
    d.anchors.forEach(function (a) { anchors[a[0]] = a[1]; });
    for (i = 0; i < n; i++) {
      order[i] = i;
      if (T[i] !== unknown && T[i] !== P[i]) { bad[i] = 1; wrong.push(i); }
    }
    for (i = n - 1; i > 0; i--) {  // a fixed shuffle: no class is always drawn over another
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      var j = seed % (i + 1), o = order[i]; order[i] = order[j]; order[j] = o;
    }
    var canvas = fig.querySelector("canvas"), ctx = canvas.getContext("2d"), tip = fig.querySelector(".scatter-tip");
    var said = fig.querySelector(".scatter-said"), legend = fig.querySelector(".scatter-legend");
    var radios = fig.querySelectorAll("input[type=radio]"), checked = fig.querySelector("input[type=radio]:checked");
    var by = checked ? checked.value : "pred", colours = d.labels.map(function (_, k) { return colour(k); });
    var sx = new Float32Array(n), sy = new Float32Array(n), w = 0, h = 0, dpr = 1, shown = -1;
    var r = n > 20000 ? 1.5 : n > 2000 ? 2 : 3, base = doc.createElement("canvas"), decoded = performance.now() - t0;
    var css = function (name) { return getComputedStyle(fig).getPropertyValue(name).trim(); };

    function layout() {  // CSS px: one scale for both axes (the map's shape is kept), centred, PAD from the edges
      w = canvas.clientWidth;
      var ex = Math.max(d.extent[0], 1), ey = Math.max(d.extent[1], 1);
      h = Math.round(Math.max(220, Math.min(w * 0.75, 560, (w - 2 * PAD) * ey / ex + 2 * PAD)));
      canvas.style.height = h + "px";  // CSSOM, allowed by the page's CSP
      var s = Math.min((w - 2 * PAD) / ex, (h - 2 * PAD) / ey), ox = (w - s * d.extent[0]) / 2, oy = (h + s * d.extent[1]) / 2;
      for (var i = 0; i < n; i++) { sx[i] = ox + s * X[i]; sy[i] = oy - s * Y[i]; }
      canvas.setAttribute("data-view", [s, ox, oy].join(","));  // where point (x, y) lies: ox + s x, oy - s y
    }
    function render() {  // every dot straight into the pixels (fast at 50 000), then rings on the mistakes
      dpr = window.devicePixelRatio || 1;
      var W = base.width = canvas.width = Math.round(w * dpr), H = base.height = canvas.height = Math.round(h * dpr);
      var b = base.getContext("2d"), img = b.createImageData(W, H), px = new Uint32Array(img.data.buffer);
      var rd = Math.max(1, Math.round(r * dpr)), disc = [], C = by === "truth" ? T : P, grey = pack(GREY);
      var packed = colours.map(pack), dx, dy, k;
      for (dy = -rd; dy <= rd; dy++) for (dx = -rd; dx <= rd; dx++) if (dx * dx + dy * dy <= rd * rd + rd) disc.push(dy * W + dx);
      var dot = function (i) {
        var c = C[i] === unknown ? grey : packed[C[i]], at = Math.round(sy[i] * dpr) * W + Math.round(sx[i] * dpr);
        for (var k = 0; k < disc.length; k++) px[at + disc[k]] = c;
      };
      for (k = 0; k < n; k++) if (!bad[order[k]]) dot(order[k]);
      wrong.forEach(dot);
      b.putImageData(img, 0, 0);
      b.setTransform(dpr, 0, 0, dpr, 0, 0);
      b.strokeStyle = css("--fg") || "#888";
      b.beginPath();
      wrong.forEach(function (i) { b.moveTo(sx[i] + r + 2.5, sy[i]); b.arc(sx[i], sy[i], r + 2.5, 0, TAU); });
      b.stroke();
      paint();
    }
    function paint() {  // the drawn points, and a ring on the point shown
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      ctx.drawImage(base, 0, 0);
      if (shown < 0) return;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.strokeStyle = css("--accent") || "#1f5fbf";
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.arc(sx[shown], sy[shown], r + 6, 0, TAU);
      ctx.stroke();
    }
    function show(i, announce) {  // the tooltip of point i (none for -1)
      shown = i;
      paint();
      tip.hidden = i < 0;
      if (i < 0) return;
      var lines = [names[i]];
      if (T[i] !== unknown) lines.push("Truth: " + d.labels[T[i]]);
      lines.push("Predicted: " + d.labels[P[i]] + (bad[i] ? " ✗ mistake" : ""));
      tip.textContent = "";
      lines.forEach(function (text, k) {
        var el = tip.appendChild(doc.createElement(k ? "div" : "strong"));
        el.textContent = text;
      });
      if (thumbs[i]) { var im = tip.appendChild(doc.createElement("img")); im.src = thumbs[i]; im.alt = ""; }
      var x = sx[i] + 12, y = sy[i] + 12;  // beside the point, inside the plot
      if (x + tip.offsetWidth > w) x = Math.max(0, sx[i] - 12 - tip.offsetWidth);
      if (y + tip.offsetHeight > h) y = Math.max(0, sy[i] - 12 - tip.offsetHeight);
      tip.style.left = x + "px";
      tip.style.top = y + "px";
      if (announce) said.textContent = lines.join(". ");
    }
    function go(i) {  // the image's card; without one, the table of every image filtered to its name
      var id = anchors[i], el = id && doc.getElementById(id), input;
      if (!el) {
        input = doc.querySelector("input.filter[data-table='images-table']");
        if (!input) return;
        el = input.closest(".images-table");
        input.value = names[i];
        input.dispatchEvent(new Event("input"));
      }
      for (var p = el.closest("details"); p; p = p.parentElement.closest("details")) p.open = true;
      if (!input && location.hash !== "#" + id) location.hash = "#" + id;
      else el.scrollIntoView();
    }
    function at(e) {  // the point nearest to the pointer, within a few pixels
      var box = canvas.getBoundingClientRect(), x = e.clientX - box.left, y = e.clientY - box.top;
      var best = -1, most = Math.pow(r + 6, 2);
      for (var i = 0; i < n; i++) {
        var dx = sx[i] - x, dy = sy[i] - y, dd = dx * dx + dy * dy;
        if (dd <= most) { most = dd; best = i; }
      }
      return best;
    }

    var item = function (rgb, text, cls) {
      var li = legend.appendChild(doc.createElement("li")), s = li.appendChild(doc.createElement("span"));
      if (rgb) s.style.background = "rgb(" + rgb + ")"; else s.className = cls;
      li.appendChild(doc.createTextNode(text));
    };
    if (d.labels.length <= 24) d.labels.forEach(function (label, k) { item(colours[k], label); });
    else item(null, d.labels.length + " classes: hover a point for its class", "none");
    if (wrong.length) item(null, "mistake", "ring");
    if (Array.prototype.indexOf.call(T, unknown) >= 0) item(GREY, "truth unknown");

    var last = null, queued = false, pointer = "mouse", step = -1, width = -1;
    canvas.addEventListener("pointermove", function (e) {
      last = e;
      if (queued) return;
      queued = true;
      requestAnimationFrame(function () { queued = false; var i = at(last); if (i !== shown) show(i); });
    });
    canvas.addEventListener("pointerleave", function (e) { if (e.pointerType !== "touch") show(-1); });
    canvas.addEventListener("pointerdown", function (e) { pointer = e.pointerType; });
    canvas.addEventListener("click", function (e) {
      var i = at(e);
      if (i < 0) return;
      if (pointer === "touch" && i !== shown) show(i);  // a tap shows the image, a second tap opens it
      else go(i);
    });
    canvas.addEventListener("keydown", function (e) {  // arrows step through the mistakes (or every image)
      var count = wrong.length || n, k = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[e.key];
      if (k && count) {
        e.preventDefault();
        step = step < 0 ? (k > 0 ? 0 : count - 1) : (step + k + count) % count;
        show(wrong.length ? wrong[step] : step, true);
      } else if (e.key === "Enter" && shown >= 0) { e.preventDefault(); go(shown); }
      else if (e.key === "Escape") show(-1);
    });
    Array.prototype.forEach.call(radios, function (radio) {
      radio.addEventListener("change", function () { by = radio.value; render(); });
    });
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", render);
    new ResizeObserver(function () {  // drawn once shown (a folded section has no width), again when resized
      if (canvas.clientWidth === width || !canvas.clientWidth) return;
      var first = width < 0, t = performance.now();
      width = canvas.clientWidth;
      layout();
      render();
      if (shown >= 0) show(shown);
      if (first) canvas.setAttribute("data-draw-ms", (decoded + performance.now() - t).toFixed(1));
    }).observe(fig);
  });
})();
