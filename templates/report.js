(function () {
  "use strict";
  // Lightbox: any figure link opens its full image; Esc closes, arrows step through figures.
  var box = document.getElementById("lightbox"), boxImg = box.querySelector("img"), boxCap = box.querySelector("figcaption");
  var links = Array.prototype.slice.call(document.querySelectorAll("a.zoom")), current = -1;
  function show(i) {
    if (i < 0 || i >= links.length) return;
    current = i;
    var link = links[i], img = link.querySelector("img"), href = link.getAttribute("href");
    boxImg.src = href && href !== "#" ? href : img.src;
    boxImg.alt = img.alt;
    boxCap.textContent = link.getAttribute("data-caption") || img.alt;
    box.hidden = false;
    box.querySelector(".close").focus();
  }
  function hide() { box.hidden = true; if (current >= 0) links[current].focus(); current = -1; }
  links.forEach(function (link, i) {
    link.addEventListener("click", function (e) { e.preventDefault(); show(i); });
  });
  box.addEventListener("click", function (e) { if (e.target !== boxImg) hide(); });
  document.addEventListener("keydown", function (e) {
    if (box.hidden) return;
    if (e.key === "Escape") hide();
    else if (e.key === "ArrowRight") show(current + 1);
    else if (e.key === "ArrowLeft") show(current - 1);
  });
  // Summary table: fold a layer's children.
  document.querySelectorAll("button.fold").forEach(function (button) {
    button.addEventListener("click", function () {
      var row = button.closest("tr"), name = row.getAttribute("data-name"), open = button.getAttribute("aria-expanded") === "false";
      button.setAttribute("aria-expanded", open ? "true" : "false");
      var prefix = name ? name + "." : "", next = row.nextElementSibling, depth = +row.getAttribute("data-depth");
      while (next && +next.getAttribute("data-depth") > depth) {
        if (!prefix || next.getAttribute("data-name").indexOf(prefix) === 0 || +next.getAttribute("data-depth") > depth) next.hidden = !open;
        var inner = next.querySelector("button.fold");
        if (inner && open) inner.setAttribute("aria-expanded", "true");
        next = next.nextElementSibling;
      }
    });
  });
  // Filter rows of a table by text.
  document.querySelectorAll("input.filter").forEach(function (input) {
    var table = document.getElementById(input.getAttribute("data-table"));
    input.addEventListener("input", function () {
      var q = input.value.trim().toLowerCase();
      table.querySelectorAll("tbody tr").forEach(function (tr) { tr.hidden = q !== "" && tr.textContent.toLowerCase().indexOf(q) < 0; });
    });
  });
  // Sort a table by a column (click its header); numbers use data-sort.
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.querySelectorAll("thead th"), body = table.tBodies[0], original = Array.prototype.slice.call(body.rows);
    heads.forEach(function (th, col) {
      th.tabIndex = 0;
      function sort() {
        var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : (th.getAttribute("aria-sort") === "descending" ? "none" : "ascending");
        heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
        var rows = original.slice();
        if (dir !== "none") {
          th.setAttribute("aria-sort", dir);
          var key = function (tr) { var c = tr.cells[col]; var v = c.getAttribute("data-sort"); return v !== null ? +v : c.textContent.trim().toLowerCase(); };
          rows.sort(function (a, b) { var x = key(a), y = key(b); var r = x < y ? -1 : x > y ? 1 : 0; return dir === "ascending" ? r : -r; });
        }
        rows.forEach(function (tr) { body.appendChild(tr); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); } });
    });
  });
  // Table of contents follows the scroll position.
  var tocLinks = Array.prototype.slice.call(document.querySelectorAll("#toc a[href^='#']"));
  if ("IntersectionObserver" in window) {
    var observer = new IntersectionObserver(function (entries) {
      entries.forEach(function (entry) {
        if (!entry.isIntersecting) return;
        tocLinks.forEach(function (a) { a.classList.toggle("active", a.getAttribute("href") === "#" + entry.target.id); });
      });
    }, { rootMargin: "0px 0px -70% 0px" });
    tocLinks.forEach(function (a) { var el = document.getElementById(a.getAttribute("href").slice(1)); if (el) observer.observe(el); });
  }
})();
