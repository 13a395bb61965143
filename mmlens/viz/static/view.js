// mmlens position/attention view. Reads the JSON in #mmlens-data; loads nothing from the network.
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("mmlens-data").textContent);
  var root = document.getElementById("mmlens-root");
  var P = D.pos.length, frag = {};

  function half(h) { // IEEE float16 -> number
    var s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    if (e === 0) return s * f * Math.pow(2, -24);
    if (e === 31) return f ? NaN : s * Infinity;
    return s * (1 + f / 1024) * Math.pow(2, e - 15);
  }
  var raw = atob(D.data), bytes = new Uint8Array(raw.length);
  for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  var vals = new Float32Array(bytes.length / 2);
  for (i = 0; i < vals.length; i++) vals[i] = half(bytes[2 * i] | (bytes[2 * i + 1] << 8));

  function el(tag, cls, parent, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function select(bar, name, options, value) {
    var lab = el("label", "", bar, name + " "), s = el("select", "", lab);
    options.forEach(function (o) { var op = el("option", "", s, o[1]); op.value = String(o[0]); });
    s.value = String(value);
    s.addEventListener("change", function () { state.pinned = false; redraw(); });
    return s;
  }

  // --- layout -------------------------------------------------------------------------------
  var bar = el("div", "bar", root), state = { q: -1, patch: -1, pinned: false };
  if (D.title) el("b", "", bar, D.title);
  var layerSel, headSel, rowSel;
  if (D.mode === "attention") {
    layerSel = select(bar, "layer", D.layers.map(function (l, j) { return [j, String(l)]; }), 0);
    var heads = [["mean", "mean of heads"]];
    for (i = 0; i < D.heads; i++) heads.push([i, String(i)]);
    headSel = select(bar, "head", heads, "mean");
  } else if (D.rows.length > 1) {
    rowSel = select(bar, D.row_name, D.rows.map(function (r, j) { return [j, r]; }), 0);
  }
  var scaleSel = select(bar, "scale", D.scales, D.scales[0][0]);
  var legend = el("span", "legend", bar), ramp = el("span", "ramp", legend), legendText = el("span", "", legend);
  var main = el("div", "main", root), panels = el("div", "", main), right = el("div", "side", main);
  var info = el("div", "info", right), tokens = el("div", "tokens", right), rects = el("pre", "rects", root);
  rects.id = "rects";

  var patchEl = {}, paintEl = {}, tokEl = {}, chips = [];
  D.panels.forEach(function (p, j) {
    var box = el("div", "panel", panels);
    el("div", "pname", box, p.name);
    var stage = el("div", "stage", box);
    stage.style.width = p.w + "px"; stage.style.height = p.h + "px";
    var pic = el("div", "pic", stage), img = el("img", "", pic);
    img.src = "data:image/png;base64," + p.png; img.alt = p.name;
    pic.style.left = 100 * p.img[0] + "%"; pic.style.top = 100 * p.img[1] + "%";
    pic.style.width = 100 * p.img[2] + "%"; pic.style.height = 100 * p.img[3] + "%";
    p.stage = stage;
  });
  D.pos.forEach(function (t, j) {
    if (t.b) {
      var d = el("div", "patch" + (t.k === "nl" ? " nl" : ""), D.panels[t.p].stage);
      d.style.left = 100 * t.b[0] + "%"; d.style.top = 100 * t.b[1] + "%";
      d.style.width = 100 * (t.b[2] - t.b[0]) + "%"; d.style.height = 100 * (t.b[3] - t.b[1]) + "%";
      d.title = t.n; d.dataset.pos = t.i;
      paintEl[j] = el("div", "paint", d); patchEl[j] = d;
      d.addEventListener("mouseover", function () { if (!state.pinned) { state.q = -1; state.patch = j; redraw(); } });
      d.addEventListener("click", function () { state.q = -1; state.patch = j; state.pinned = !state.pinned; redraw(); });
    }
    var image = t.k === "img" || t.k === "nl" || t.k === "pad";
    if (image) {
      var last = chips[chips.length - 1];
      if (last && last.end === j - 1) { last.end = j; last.members.push(j); return; }
      var c = el("span", "tok img", tokens);
      chips.push({ el: c, end: j, members: [j] });
      return;
    }
    var s = el("span", "tok" + (t.k === "special" ? " special" : ""), tokens, t.t);
    s.title = t.n + " (position " + t.i + ")"; s.dataset.pos = t.i; tokEl[j] = s;
    s.addEventListener("mouseover", function () { if (!state.pinned) { state.patch = -1; state.q = j; redraw(); } });
    s.addEventListener("click", function () { state.patch = -1; state.q = j; state.pinned = !state.pinned; redraw(); });
  });

  // --- values -------------------------------------------------------------------------------
  var qIndex = {};
  if (D.mode === "attention") D.queries.forEach(function (p, r) { qIndex[p] = r; });
  function row(q) { // attention of query q over all positions, or the chosen values row
    var out = new Float32Array(P);
    if (D.mode !== "attention") { var o = (rowSel ? +rowSel.value : 0) * P; for (var k = 0; k < P; k++) out[k] = vals[o + k]; return out; }
    var r = qIndex[q]; if (r === undefined) return null;
    var L = +layerSel.value, H = D.heads, Q = D.queries.length, hs = headSel.value === "mean" ? null : +headSel.value;
    for (var h = 0; h < H; h++) {
      if (hs !== null && h !== hs) continue;
      var base = ((L * H + h) * Q + r) * P;
      for (k = 0; k < P; k++) out[k] += vals[base + k] / (hs === null ? H : 1);
    }
    return out;
  }
  function colour(v, top) {
    var a = Math.min(1, Math.abs(v) / top) * 0.85;
    return v >= 0 ? "rgba(255,40,0," + a.toFixed(3) + ")" : "rgba(0,90,255," + a.toFixed(3) + ")";
  }
  function fmt(v) { return Math.abs(v) >= 0.01 || v === 0 ? v.toFixed(3) : v.toExponential(1); }
  function paint(values, top, what, noSum) {
    D.panels.forEach(function (p) { p.stage.classList.toggle("dim", !!values || !!frag.dim); });
    D.pos.forEach(function (t, j) {
      var c = values && values[j] !== 0 ? colour(values[j], top) : "";
      if (paintEl[j]) paintEl[j].style.background = c;
      if (tokEl[j]) tokEl[j].style.background = c;
    });
    chips.forEach(function (ch) {
      var n = ch.members.length, sum = 0;
      if (values) ch.members.forEach(function (j) { sum += values[j]; });
      ch.el.textContent = "image \u00d7" + n + (values && !noSum ? " \u03a3 " + fmt(sum) : "");
    });
    var signed = D.signed;
    ramp.style.background = signed ? "linear-gradient(90deg," + colour(-1, 1) + ",#fff," + colour(1, 1) + ")"
                                   : "linear-gradient(90deg,#fff," + colour(1, 1) + ")";
    legendText.textContent = (signed ? fmt(-top) + " \u2026 " : "0 \u2026 ") + fmt(top) + " " + what;
    legend.style.visibility = values ? "visible" : "hidden";
  }
  function scaleTop(values, skip) {
    var kind = scaleSel.value, m = 0;
    if (kind === "one") return 1;
    if (kind === "all") { for (var k = 0; k < vals.length; k++) m = Math.max(m, Math.abs(vals[k])); return m || 1; }
    for (k = 0; k < P; k++) if (k !== skip) m = Math.max(m, Math.abs(values[k]));
    return m || 1;
  }
  function redraw() {
    D.pos.forEach(function (t, j) {
      if (patchEl[j]) patchEl[j].classList.toggle("sel", j === state.patch);
      if (tokEl[j]) tokEl[j].classList.toggle("sel", j === state.q);
    });
    if (D.mode !== "attention") {
      var v = row(-1), top = scaleTop(v, -1), j = state.q >= 0 ? state.q : state.patch;
      paint(v, top, D.value_name);
      info.textContent = j >= 0 ? D.pos[j].n + " (position " + D.pos[j].i + "): " + fmt(v[j]) : "Hover a token or a patch to read its value.";
      return;
    }
    if (state.q >= 0) {
      var a = row(state.q);
      if (!a) { paint(null, 1, ""); info.textContent = "no stored attention for this position"; return; }
      var img = 0, best = -1;
      D.pos.forEach(function (t, k) { if (t.b) { img += a[k]; if (best < 0 || a[k] > a[best]) best = k; } });
      paint(a, scaleTop(a, -1), "attention");
      info.textContent = "\u201c" + D.pos[state.q].t + "\u201d (position " + D.pos[state.q].i + ") attends " + fmt(img) +
        " to the image" + (best >= 0 ? ", most to " + D.pos[best].n + " (" + fmt(a[best]) + ")" : "") + (state.pinned ? " \u2014 pinned, click to release" : "");
    } else if (state.patch >= 0) {
      var col = new Float32Array(P);
      D.queries.forEach(function (q) { var r = row(q); col[q] = r ? r[state.patch] : 0; });
      paint(col, scaleTop(col, -1), "attention to this patch", true);
      info.textContent = "text tokens attending to " + D.pos[state.patch].n + " (position " + D.pos[state.patch].i + ")";
    } else {
      paint(null, 1, ""); info.textContent = "Hover (or click to pin) a text token for its attention; hover a patch for the tokens that read it.";
    }
  }

  // --- #hover=<pos>&patch=<pos>&layer=<l>&head=<h|mean>&rects=1 (used by the browser test) ---
  location.hash.replace(/^#/, "").split("&").forEach(function (kv) { var p = kv.split("="); if (p[0]) frag[p[0]] = decodeURIComponent(p[1] || ""); });
  if (layerSel && frag.layer !== undefined) layerSel.value = String(D.layers.indexOf(+frag.layer));
  if (headSel && frag.head !== undefined) headSel.value = frag.head;
  if (rowSel && frag.row !== undefined) rowSel.value = frag.row;
  if (frag.scale !== undefined) scaleSel.value = frag.scale;
  redraw();
  var target = frag.hover !== undefined ? tokens : frag.patch !== undefined ? panels : null;
  if (target) {
    var e = target.querySelector('[data-pos="' + (frag.hover !== undefined ? frag.hover : frag.patch) + '"]');
    if (e) e.dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
  }
  if (frag.rects) {
    var out = {};
    D.pos.forEach(function (t, j) { if (patchEl[j]) { var r = patchEl[j].getBoundingClientRect(); out[t.i] = [r.left, r.top, r.width, r.height]; } });
    rects.textContent = JSON.stringify(out);
  }
})();
