// Search: a dropped or chosen file → POST /render (the query as the service sees it) and
// POST /search (prediction, notices, result cards).

import { releaseImages, request, showBlob } from "./api.js";
import {
  $, bytes, clampK, dropTarget, fillGrid, fillScopeClasses, predictionChart, scopeParams,
  searchNotices, setBusy, show, showError,
} from "./ui.js";

let file = null;
let run = 0; // the latest search; answers of older ones are dropped
let controller = null;
let offered = new Set();

export function initSearch(server) {
  offered = server.features.searchParams;
  fillScopeClasses($("search-scope-classes"), server.classes);
  for (const node of document.querySelectorAll("#view-search [data-feature]")) {
    show(node, offered.has(node.dataset.feature));
  }
  const input = $("search-file");
  input.addEventListener("change", () => {
    if (input.files.length) choose(input.files[0]);
  });
  dropTarget($("search-drop"), (files) => choose(files[0]));
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (file) search();
  });
  for (const id of ["search-scope", "search-group", "search-exclude-study"]) {
    $(id).addEventListener("change", () => file && search());
  }
  $("search-k").addEventListener("change", () => file && search());
}

export function enterSearch() {}

function choose(chosen) {
  file = chosen;
  $("search-submit").disabled = false;
  search();
}

function form() {
  const data = new FormData();
  data.append("file", file, file.name || "query");
  return data;
}

async function search() {
  const mine = ++run;
  controller?.abort();
  controller = new AbortController();
  const { signal } = controller;
  const k = clampK($("search-k"));
  const { scope, params } = scopeParams($("search-scope").value);
  if (offered.has("group_by") && $("search-group").checked) params.group_by = "series";
  if (offered.has("exclude_same_study") && $("search-exclude-study").checked) {
    params.exclude_same_study = true;
  }
  const results = $("search-results");
  setBusy(results, "loading");
  showError($("search-error"), null);
  $("search-summary").textContent = "Searching…";
  $("search-submit").disabled = true;
  showQuery(mine, signal);
  try {
    const started = performance.now();
    const res = await request("/search", { method: "POST", body: form(), params: { k, ...params }, signal });
    const body = await res.json();
    if (mine !== run) return;
    const ms = Math.round(performance.now() - started);
    $("search-prediction").querySelector(".prediction-body").replaceChildren(...predictionChart(body.prediction));
    show($("search-prediction"));
    $("search-notices").replaceChildren(...searchNotices(body, scope));
    fillGrid(results, body.results, { ranked: true });
    show($("search-empty"), body.results.length === 0);
    $("search-empty").textContent = "No stored images in this scope.";
    const n = body.results.length;
    $("search-summary").textContent = `${n} result${n === 1 ? "" : "s"}` +
      `${n < k ? ` (${k} asked)` : ""} · ${ms} ms, ${Math.round(body.took_ms)} ms in the service`;
    setBusy(results, "done");
  } catch (err) {
    if (err.name === "AbortError" || mine !== run) return;
    releaseImages(results);
    results.replaceChildren();
    $("search-notices").replaceChildren();
    show($("search-prediction"), false);
    showError($("search-error"), err);
    $("search-summary").textContent = `${file.name || "The file"} was not searched`;
    show($("search-empty"), false);
    setBusy(results, "error");
  } finally {
    if (mine === run) $("search-submit").disabled = false;
  }
}

async function showQuery(mine, signal) {
  const figure = $("query-figure");
  const img = $("query-image");
  const caption = $("query-caption");
  const name = file.name || "query";
  caption.textContent = `${name} · ${bytes(file.size)}`;
  img.alt = `The query, ${name}, as the service renders it`;
  try {
    const res = await request("/render", { method: "POST", body: form(), signal });
    if (mine !== run) return;
    const blob = await res.blob();
    releaseImages(figure);
    show(figure);
    await showBlob(img, blob, figure);
    $("search-drop").dataset.state = "shown";
    $("search-drop-title").textContent = "Drop another image";
  } catch (err) {
    if (err.name === "AbortError" || mine !== run) return;
    show(figure, false);
    $("search-drop").dataset.state = "empty";
    $("search-drop-title").textContent = "Drop an image here";
  }
}
