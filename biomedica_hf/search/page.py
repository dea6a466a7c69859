"""The search page served at ``/``: one self-contained HTML file (no external assets or CDNs)."""
# ruff: noqa: E501

PAGE_HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>BIOMEDICA search</title>
<link rel="icon" href="data:,">
<style>
  :root { --fg:#1d2530; --muted:#5b6675; --line:#d9dee5; --accent:#1f6feb; --bg:#f5f7fa; --card:#fff; }
  * { box-sizing: border-box; }
  body { margin:0; font:15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg); background:var(--bg); }
  header { background:#fff; border-bottom:1px solid var(--line); padding:14px 24px 10px; position:sticky; top:0; z-index:2; }
  h1 { font-size:19px; margin:0 0 10px; font-weight:650; }
  h1 small { font-weight:400; color:var(--muted); font-size:13px; margin-left:8px; }
  form { display:flex; flex-direction:column; gap:8px; }
  .row { display:flex; gap:8px; align-items:stretch; flex-wrap:wrap; }
  #q { flex:1 1 380px; min-width:200px; font-size:16px; padding:9px 12px; border:1px solid var(--line); border-radius:8px; }
  #q:focus { outline:2px solid var(--accent); outline-offset:-1px; }
  #drop[hidden] { display:none; }
  #drop { flex:0 0 auto; display:flex; align-items:center; gap:8px; padding:4px 10px; border:1.5px dashed #9aa6b5;
          border-radius:8px; color:var(--muted); cursor:pointer; font-size:13px; min-height:40px; background:#fafbfc; }
  #drop.over { border-color:var(--accent); background:#eef4ff; }
  #drop img { height:30px; width:30px; object-fit:cover; border-radius:4px; }
  #drop .clear { border:0; background:none; font-size:16px; cursor:pointer; color:var(--muted); padding:0 2px; }
  button.primary { background:var(--accent); color:#fff; border:0; border-radius:8px; padding:0 20px; font-size:15px; cursor:pointer; min-height:40px; }
  button.primary:hover { background:#1a5fd0; }
  .filters { display:flex; gap:16px; flex-wrap:wrap; align-items:center; font-size:13px; color:var(--muted); }
  .filters label { display:inline-flex; gap:4px; align-items:center; }
  .filters select, .filters input[type=number], .filters input[type=text] { font-size:13px; padding:3px 6px; border:1px solid var(--line); border-radius:6px; }
  .filters input[type=number] { width:76px; }
  main { padding:16px 24px 40px; }
  #status { color:var(--muted); font-size:13px; margin:0 0 12px; min-height:18px; }
  #error { display:none; background:#fdecea; color:#8a1c12; border:1px solid #f5c2bd; padding:8px 12px; border-radius:8px; margin-bottom:12px; }
  #results { display:grid; grid-template-columns:repeat(auto-fill, minmax(260px, 1fr)); gap:16px; }
  .card { background:var(--card); border:1px solid var(--line); border-radius:10px; overflow:hidden; display:flex; flex-direction:column; min-width:0; }
  .thumb { display:block; background:#fff; height:200px; overflow:hidden; border-bottom:1px solid var(--line); padding:6px; }
  .thumb img { width:100%; height:100%; object-fit:contain; display:block; }
  .body { padding:10px 12px 12px; display:flex; flex-direction:column; gap:6px; min-width:0; }
  .title { font-weight:600; font-size:14px; line-height:1.3; overflow-wrap:anywhere;
           display:-webkit-box; -webkit-line-clamp:2; -webkit-box-orient:vertical; overflow:hidden; }
  .label { color:var(--accent); font-weight:600; margin-right:4px; }
  .caption { font-size:13px; color:#333c48; overflow-wrap:anywhere; display:-webkit-box; -webkit-line-clamp:5;
             -webkit-box-orient:vertical; overflow:hidden; cursor:pointer; }
  .caption.open { -webkit-line-clamp:unset; }
  .chips { display:flex; gap:6px; flex-wrap:wrap; }
  .chip { font-size:11px; background:#eef1f5; color:#3b4654; border-radius:10px; padding:1px 8px; white-space:nowrap; }
  .chip.commercial { background:#e3f4e8; color:#1d6b35; } .chip.noncommercial { background:#fff4dc; color:#7a5300; } .chip.other { background:#f1e9fb; color:#5b2d91; }
  .links { display:flex; gap:4px 12px; font-size:12px; margin-top:2px; align-items:center; flex-wrap:wrap; }
  .links > * { overflow-wrap:anywhere; }
  .links a { color:var(--accent); text-decoration:none; } .links a:hover { text-decoration:underline; }
  .score { margin-left:auto; color:var(--muted); font-size:11px; font-variant-numeric:tabular-nums; white-space:nowrap; }
  nav.pager { display:flex; gap:10px; justify-content:center; align-items:center; margin-top:20px; color:var(--muted); font-size:13px; }
  nav.pager button { border:1px solid var(--line); background:#fff; border-radius:6px; padding:5px 14px; cursor:pointer; }
  nav.pager button:disabled { opacity:.4; cursor:default; }
  .empty { color:var(--muted); padding:30px 0; text-align:center; }
  @media (max-width: 640px) {
    header { position:static; padding:10px 12px 8px; } main { padding:12px; }
    h1 small { display:block; margin:2px 0 0; } .filters { gap:6px 12px; }
    #drop { flex:1 1 auto; } #results { grid-template-columns:1fr; }
  }
</style>
</head>
<body>
<header>
  <h1>BIOMEDICA search <small id="about"></small></h1>
  <form id="form" autocomplete="off">
    <div class="row">
      <input id="q" name="q" type="search" placeholder="Search figures and captions, e.g. chest CT ground-glass opacity" maxlength="1000">
      <label id="drop" title="Drop an image here or click to choose one" hidden>
        <input id="file" type="file" accept="image/*" hidden>
        <svg class="icon" width="18" height="18" viewBox="0 0 24 24" aria-hidden="true"><path fill="currentColor" d="M21 19V5a2 2 0 0 0-2-2H5a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h14a2 2 0 0 0 2-2zM8.5 13.5l2.5 3 3.5-4.5 4.5 6H5l3.5-4.5z"/></svg>
        <span id="drop-text">Drop an image or click</span>
      </label>
      <button id="search-btn" class="primary" type="submit">Search</button>
    </div>
    <div class="filters">
      <span id="subsets"></span>
      <label>Licence <select id="license"><option value="">any</option></select></label>
      <label>Year <input id="year_min" type="number" min="0" max="9999" placeholder="from"> &ndash;
        <input id="year_max" type="number" min="0" max="9999" placeholder="to"></label>
      <label id="concept-box" hidden>Concept <input id="concept" type="text" list="concepts" placeholder="any"><datalist id="concepts"></datalist></label>
    </div>
  </form>
</header>
<main>
  <div id="error" role="alert"></div>
  <p id="status">Type a query.</p>
  <section id="results" aria-live="polite"></section>
  <nav class="pager" id="pager" hidden>
    <button id="prev" type="button">&larr; Previous</button><span id="page"></span><button id="next" type="button">Next &rarr;</button>
  </nav>
</main>
<script>
"use strict";
const PAGE = 24;
const $ = (id) => document.getElementById(id);
const state = { offset: 0, file: null, imageSearch: false };
const HINT = () => state.imageSearch ? "Type a query or drop an image." : "Type a query.";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

async function loadFacets() {
  try {
    const [health, facets] = await Promise.all([fetch("health").then(r => r.json()), fetch("facets").then(r => r.json())]);
    $("about").textContent = `${health.figures.toLocaleString()} figures \u00b7 ${health.sources.join(", ")}`;
    state.imageSearch = !!health.image_search;  // an index without an image encoder cannot answer image queries
    $("drop").hidden = !state.imageSearch;
    $("q").placeholder = state.imageSearch ? "Search figures and captions, or drop an image" : $("q").placeholder;
    if (!state.offset && !$("q").value) $("status").textContent = HINT();
    const subsets = $("subsets");
    for (const [name, n] of Object.entries(facets.subset)) {
      const box = el("input", { type: "checkbox", value: name, class: "subset" });
      subsets.append(el("label", {}, box, document.createTextNode(`${name} (${n})`)), document.createTextNode(" "));
    }
    for (const [name, n] of Object.entries(facets.license)) $("license").append(el("option", { value: name, text: `${name} (${n})` }));
    if (facets.year.min !== null) { $("year_min").placeholder = facets.year.min; $("year_max").placeholder = facets.year.max; }
    const concepts = Object.keys(facets.concept);
    if (concepts.length) {
      $("concept-box").hidden = false;
      for (const c of concepts) $("concepts").append(el("option", { value: c }));
    }
  } catch (e) { showError("Cannot reach the search service: " + e); }
}

function filterParams() {
  const p = [];
  document.querySelectorAll("input.subset:checked").forEach(b => p.push(["subset", b.value]));
  if ($("license").value) p.push(["license", $("license").value]);
  if ($("year_min").value) p.push(["year_min", $("year_min").value]);
  if ($("year_max").value) p.push(["year_max", $("year_max").value]);
  if ($("concept").value.trim()) p.push(["concept", $("concept").value.trim()]);
  return p;
}

function showError(msg) { const e = $("error"); e.textContent = msg; e.style.display = msg ? "block" : "none"; }

async function search(offset) {
  const q = $("q").value.trim();
  if (!q && !state.file) { $("status").textContent = HINT(); return; }
  state.offset = offset;
  showError("");
  $("status").textContent = "Searching\u2026";
  const params = [...filterParams(), ["offset", String(offset)], ["limit", String(PAGE)]];
  let resp;
  try {
    if (state.file) {
      const fd = new FormData();
      if (q) fd.append("q", q);
      fd.append("image", state.file);
      for (const [k, v] of params) fd.append(k, v);
      resp = await fetch("search", { method: "POST", body: fd });
    } else {
      resp = await fetch("search?" + new URLSearchParams([["q", q], ...params]));
    }
  } catch (e) { showError("Request failed: " + e); $("status").textContent = ""; return; }
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    showError((data.error && data.error.message) || `HTTP ${resp.status}`);
    $("status").textContent = ""; render({ results: [], total: 0, offset: 0 }); return;
  }
  if (q && !state.file) history.replaceState(null, "", "?" + new URLSearchParams([["q", q]]));
  render(data);
}

function render(data) {
  const grid = $("results");
  grid.replaceChildren();
  const n = data.results.length;
  if (data.timings_ms) {
    const shown = n ? `${data.offset + 1}\u2013${data.offset + n} of ${data.total}` : "0";
    $("status").textContent = `${shown} results \u00b7 ${data.timings_ms.total.toFixed(1)} ms \u00b7 ${data.sources.join(" + ")}`;
  }
  if (!n && data.timings_ms) grid.append(el("div", { class: "empty", text: "No figures match." }));
  for (const h of data.results) grid.append(card(h));
  $("pager").hidden = data.total <= PAGE && data.offset === 0;
  $("prev").disabled = data.offset === 0;
  $("next").disabled = data.offset + n >= data.total;
  $("page").textContent = `page ${Math.floor(data.offset / PAGE) + 1}`;
}

function card(h) {
  const img = el("img", { src: h.thumbnail_url, alt: h.figure_label || h.key, loading: "lazy" });
  const thumb = el("a", { class: "thumb", href: h.image_url, target: "_blank", rel: "noopener" }, img);
  const title = el("div", { class: "title" });
  if (h.figure_label) title.append(el("span", { class: "label", text: h.figure_label }));
  title.append(document.createTextNode(h.title || h.pmcid));
  const caption = el("div", { class: "caption", text: h.caption, title: "click to expand" });
  caption.addEventListener("click", () => caption.classList.toggle("open"));
  const chips = el("div", { class: "chips" });
  if (h.year) chips.append(el("span", { class: "chip", text: String(h.year) }));
  if (h.subset) chips.append(el("span", { class: "chip " + h.subset, text: h.subset }));
  if (h.license_code) chips.append(el("span", { class: "chip", text: h.license_code }));
  for (const c of (h.concepts || []).slice(0, 3)) chips.append(el("span", { class: "chip", text: c }));
  if ((h.panels || []).length > 1) chips.append(el("span", { class: "chip panels", text: `${h.panels.length} panels` }));
  const links = el("div", { class: "links" });
  if (h.pmc_url) links.append(el("a", { class: "pmc", href: h.pmc_url, target: "_blank", rel: "noopener", text: h.pmcid + " \u2197" }));
  else links.append(el("span", { text: h.pmcid }));
  links.append(el("a", { href: h.figure_url, target: "_blank", text: "details" }));
  links.append(el("span", { class: "score", title: JSON.stringify(h.ranks), text: "#" + h.rank + " \u00b7 " + h.score.toFixed(4) }));
  return el("article", { class: "card", "data-key": h.key }, thumb, el("div", { class: "body" }, title, caption, chips, links));
}

function setFile(file) {
  state.file = file;
  const drop = $("drop"), text = $("drop-text");
  drop.querySelectorAll("img, .clear").forEach(x => x.remove());
  drop.querySelector(".icon").style.display = file ? "none" : "";
  if (!file) { text.textContent = "Drop an image or click"; $("file").value = ""; return; }
  text.textContent = file.name.length > 22 ? file.name.slice(0, 20) + "\u2026" : file.name;
  const preview = el("img", { alt: "query image" });
  preview.src = URL.createObjectURL(file);
  const clear = el("button", { type: "button", class: "clear", title: "remove image", text: "\u00d7" });
  clear.addEventListener("click", (e) => { e.preventDefault(); e.stopPropagation(); setFile(null); });
  drop.prepend(preview); drop.append(clear);
}

$("form").addEventListener("submit", (e) => { e.preventDefault(); search(0); });
$("prev").addEventListener("click", () => search(Math.max(0, state.offset - PAGE)));
$("next").addEventListener("click", () => search(state.offset + PAGE));
$("file").addEventListener("change", (e) => { if (e.target.files[0]) { setFile(e.target.files[0]); search(0); } });
const drop = $("drop");
["dragenter", "dragover"].forEach(t => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach(t => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => { const f = e.dataTransfer.files[0]; if (f) { setFile(f); search(0); } });
document.querySelector(".filters").addEventListener("change", () => {  // delegated: facets load later
  if ($("q").value.trim() || state.file) search(0);
});
loadFacets().then(() => {
  const q = new URLSearchParams(location.search).get("q");
  if (q) { $("q").value = q; search(0); }
});
</script>
</body>
</html>
"""
