/* reportgen report: progressive enhancement only. Everything is readable without this script. */
(function () {
  "use strict";
  var doc = document, root = doc.documentElement;
  root.classList.add("js");
  function all(selector, scope) { return Array.prototype.slice.call((scope || doc).querySelectorAll(selector)); }
  function activate(el, action) {  // click, Enter and Space
    el.addEventListener("click", action);
    el.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); action(e); }
    });
  }

  // Lightbox: every figure opens large; Esc closes, arrows step through the figures in page order.
  // A layered figure (span.stack: an overlay or a map) opens as one too, with the same CSS classes.
  var box = doc.getElementById("lightbox"), zooms = all("figure.fig .zoom");
  if (box && typeof box.showModal === "function") {
    var boxImg = box.querySelector("img"), boxStack = box.querySelector(".lb-stack");
    var boxCap = box.querySelector("figcaption"), count = box.querySelector(".lb-count");
    var current = -1;
    var fit = function () {  // the largest size with the picture's aspect ratio that fits above the caption
      if (current < 0) return;
      var img = zooms[current].tagName === "IMG" ? zooms[current] : zooms[current].querySelector("img");
      var w = +img.getAttribute("width") || img.naturalWidth || 1, h = +img.getAttribute("height") || img.naturalHeight || 1;
      var room = box.querySelector("figure").getBoundingClientRect();
      var scale = Math.min(room.width / w, (room.height - boxCap.offsetHeight - 8) / h);
      boxStack.style.width = Math.max(1, Math.floor(w * scale)) + "px";  // CSSOM, allowed by the page's CSP
      boxStack.style.height = Math.max(1, Math.floor(h * scale)) + "px";
    };
    var show = function (i) {
      current = (i + zooms.length) % zooms.length;
      var el = zooms[current], img = el.tagName === "IMG" ? el : el.querySelector("img");
      var fig = el.closest("figure"), cap = fig.querySelector("figcaption"), pixel = fig.classList.contains("pixel");
      boxImg.src = el.tagName === "A" ? el.getAttribute("href") : img.getAttribute("src");
      boxImg.alt = img.alt;
      // a layered figure brings its classes along: the picture beneath, the map over it, its opacity
      boxStack.className = "lb-stack" + (el.classList.contains("stack") ? " " + el.className.replace(/\b(zoom|stack)\b/g, "") : "") + (pixel ? " pixel" : "");
      boxCap.textContent = cap ? cap.textContent : img.alt;
      count.textContent = (current + 1) + " / " + zooms.length;
      if (!box.open) box.showModal();
      fit();
    };
    window.addEventListener("resize", fit);
    zooms.forEach(function (el, i) {
      el.setAttribute("aria-haspopup", "dialog");
      if (el.tagName !== "A") { el.tabIndex = 0; el.setAttribute("role", "button"); }
      activate(el, function (e) { e.preventDefault(); show(i); });
    });
    box.querySelector(".lb-prev").addEventListener("click", function () { show(current - 1); });
    box.querySelector(".lb-next").addEventListener("click", function () { show(current + 1); });
    box.querySelector(".lb-close").addEventListener("click", function () { box.close(); });
    box.addEventListener("click", function (e) {  // a click beside the picture closes
      if (e.target === box || e.target.tagName === "FIGURE") box.close();
    });
    box.addEventListener("keydown", function (e) {
      if (e.key === "ArrowRight") { e.preventDefault(); show(current + 1); }
      else if (e.key === "ArrowLeft") { e.preventDefault(); show(current - 1); }
    });
    box.addEventListener("close", function () { boxImg.removeAttribute("src"); current = -1; });
  }

  // The table of every image, drawn from its JSON (figures/images.py) before sorting and filtering are set up.
  var data = doc.getElementById("images-data"), tbody = doc.querySelector("#images-table tbody");
  if (data && tbody) {
    var d = JSON.parse(data.textContent), rows = doc.createDocumentFragment();
    var span = function (td, text, cls) { var s = td.appendChild(doc.createElement("span")); s.textContent = text; s.className = cls; };
    d.rows.forEach(function (r) {  // name, truth, prediction, confidence or mIoU, correct[, anchor, detail]
      var tr = rows.appendChild(doc.createElement("tr")), name = tr.insertCell(), td;
      if (r[5]) { name = name.appendChild(doc.createElement("a")); name.href = "#" + r[5]; name.title = r[6]; }
      name.textContent = r[0];
      if (d.labelled) tr.insertCell().textContent = r[1] === null ? "–" : d.labels[r[1]];
      tr.insertCell().textContent = d.labels[r[2]];
      td = tr.insertCell();
      td.className = "num";
      td.setAttribute("data-sort", r[3] === null ? -1 : r[3]);
      td.textContent = r[3] === null ? "–" : (100 * r[3]).toFixed(1) + "%";
      if (!d.labelled) return;
      td = tr.insertCell();
      if (r[4] === null) return;
      td.setAttribute("data-sort", r[4]);
      span(td, r[4] ? "✓" : "✗", r[4] ? "yes" : "no");
      span(td, r[4] ? "correct" : "mistake", "visually-hidden");
      if (!r[4]) tr.className = "wrong";
    });
    tbody.appendChild(rows);
  }

  // Summary table: fold a layer's children (rows named "<layer>.*"), whatever order the rows are sorted in.
  var unfoldAll = function (table) {
    all("button.fold", table).forEach(function (b) { b.setAttribute("aria-expanded", "true"); });
    all("tbody tr", table).forEach(function (tr) { tr.hidden = false; });
  };
  all("button.fold").forEach(function (button) {
    button.addEventListener("click", function () {
      var row = button.closest("tr"), name = row.getAttribute("data-name") || "";
      var open = button.getAttribute("aria-expanded") === "false", prefix = name ? name + "." : "";
      button.setAttribute("aria-expanded", open ? "true" : "false");
      all("tr[data-name]", row.parentNode).forEach(function (tr) {
        if (tr === row || tr.getAttribute("data-name").indexOf(prefix) !== 0) return;
        tr.hidden = !open;
        var inner = tr.querySelector("button.fold");
        if (inner && open) inner.setAttribute("aria-expanded", "true");
      });
    });
  });

  // Filter a table's rows by the columns in data-cols (default: layer name and type in the summary); a checkbox
  // named by data-only keeps, while ticked, only rows of the class that is its value.
  all("input.filter").forEach(function (input) {
    var table = doc.getElementById(input.getAttribute("data-table"));
    if (!table) return;
    var cols = (input.getAttribute("data-cols") || "0,1").split(","), keep = doc.getElementById(input.getAttribute("data-only"));
    var rows = all("tbody tr", table), shown = doc.createElement("span");
    shown.className = "note filter-count";
    shown.setAttribute("aria-live", "polite");
    input.parentNode.parentNode.appendChild(shown);
    var update = function () {
      var q = input.value.trim().toLowerCase(), n = 0;
      if (q) unfoldAll(table);  // a match inside a folded layer is shown
      rows.forEach(function (tr) {
        var text = cols.map(function (c) { return tr.cells[c].textContent; }).join(" ");
        var out = (q !== "" && text.toLowerCase().indexOf(q) < 0) || (keep && keep.checked && !tr.classList.contains(keep.value));
        tr.classList.toggle("filtered-out", out);
        if (!out) n += 1;
      });
      shown.textContent = q || (keep && keep.checked) ? n + " of " + rows.length + " rows" : "";
    };
    input.addEventListener("input", update);
    if (keep) keep.addEventListener("change", update);
  });

  // Sort a table by a column: its header is a button; numbers sort by data-sort. Third press: original order.
  all("table.sortable").forEach(function (table) {
    var heads = all("thead th", table), body = table.tBodies[0], original = Array.prototype.slice.call(body.rows);
    heads.forEach(function (th, col) {
      var button = doc.createElement("button");
      button.type = "button";
      button.className = "sort";
      while (th.firstChild) button.appendChild(th.firstChild);
      th.appendChild(button);
      button.addEventListener("click", function () {
        var state = th.getAttribute("aria-sort");
        var dir = state === "ascending" ? "descending" : state === "descending" ? "none" : "ascending";
        heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
        var rows = original.slice();
        if (dir !== "none") {
          th.setAttribute("aria-sort", dir);
          var key = function (tr) {
            var cell = tr.cells[col], v = cell.getAttribute("data-sort");
            return v !== null && v !== "" && !isNaN(+v) ? +v : cell.textContent.trim().toLowerCase();
          };
          rows.sort(function (a, b) {
            var x = key(a), y = key(b), r = x < y ? -1 : x > y ? 1 : 0;
            return dir === "ascending" ? r : -r;
          });
        }
        rows.forEach(function (tr) { body.appendChild(tr); });
      });
    });
  });

  // Table of contents: the stage (and image) on screen is marked as you scroll.
  var toc = doc.getElementById("toc");
  var stageLinks = all("#toc .toc-stages a"), imageLinks = all("#toc .toc-images a");
  var target = function (a) { return doc.getElementById(decodeURIComponent(a.hash.slice(1))); };
  var mark = function (links, active) {
    links.forEach(function (a) {
      a.classList.toggle("active", a === active);
      if (a === active) a.setAttribute("aria-current", "location"); else a.removeAttribute("aria-current");
    });
    if (active && toc && toc.scrollHeight > toc.clientHeight) {  // keep the marked link in the sidebar's view
      var top = active.offsetTop - toc.offsetTop;
      if (top < toc.scrollTop || top > toc.scrollTop + toc.clientHeight - 40) toc.scrollTop = top - toc.clientHeight / 3;
    }
  };
  var inView = function (el) { var r = el.getBoundingClientRect(); return r.bottom > 0 && r.top < window.innerHeight; };
  var pending = false;
  var track = function () {
    pending = false;
    var line = Math.min(window.innerHeight * 0.25, 160);
    var followed = location.hash ? doc.getElementById(decodeURIComponent(location.hash.slice(1))) : null;
    if (followed && !inView(followed)) followed = null;
    var atEnd = window.innerHeight + window.scrollY >= root.scrollHeight - 2;
    var stage = stageLinks[0], image = null;
    stageLinks.forEach(function (a) {
      var el = target(a);
      if (el && el.getBoundingClientRect().top <= line) stage = a;
      if (atEnd && el && el === followed) stage = a;  // the last sections never reach the line: trust the link
    });
    imageLinks.forEach(function (a) {
      var el = target(a);
      if (!el) return;
      var r = el.getBoundingClientRect();
      if (el === followed || (!image && r.top <= line && r.bottom > line)) image = a;
    });
    mark(stageLinks, stage);
    mark(imageLinks, image);
  };
  var schedule = function () { if (!pending) { pending = true; window.requestAnimationFrame(track); } };
  window.addEventListener("scroll", schedule, { passive: true });
  window.addEventListener("resize", schedule);
  window.addEventListener("hashchange", schedule);
  all("a[href^='#']").forEach(function (a) {  // a folded section opens when a link to it (or into it) is followed
    a.addEventListener("click", function () {
      var el = target(a);
      if (!el) return;
      var own = el.querySelector(":scope > details");
      if (own) own.open = true;
      for (var d = el.closest("details"); d; d = d.parentElement.closest("details")) d.open = true;
    });
  });
  track();

  // Printing: open every folded section, then put things back.
  var reopened = [];
  window.addEventListener("beforeprint", function () {
    reopened = all("details:not([open])");
    reopened.forEach(function (d) { d.open = true; });
  });
  window.addEventListener("afterprint", function () {
    reopened.forEach(function (d) { d.open = false; });
    reopened = [];
  });
})();
