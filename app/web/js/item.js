// One stored item: its rendering and metadata, relabel (PATCH), delete, find similar.

import { getJSON, loadImage, releaseImages, request } from "./api.js";
import { flashGallery, galleryHash } from "./gallery.js";
import {
  $, clampK, confirmDialog, el, fillGrid, fillScopeClasses, keyMetadata, metaList,
  predictionChart, scopeParams, searchNotices, setBusy, show, showError,
} from "./ui.js";
import { refreshHealth } from "./status.js";

let item = null;
let opened = 0;

export function initItem(server) {
  const select = $("relabel-select");
  select.append(...server.classes.map((c) => el("option", { value: c, text: c })));
  fillScopeClasses($("similar-scope-classes"), server.classes);
  $("relabel-form").addEventListener("submit", (event) => {
    event.preventDefault();
    relabel();
  });
  $("delete-button").addEventListener("click", remove);
  $("similar-form").addEventListener("submit", (event) => {
    event.preventDefault();
    similar();
  });
  $("similar-scope").addEventListener("change", similar);
}

export async function enterItem(id) {
  const mine = ++opened;
  item = null;
  $("item-back").href = galleryHash();
  $("item-title").textContent = `Image ${id}`;
  $("item-subtitle").textContent = "";
  show($("item-notice"), false);
  showError($("item-error"), null);
  show($("item-body"), true);
  $("item-meta").replaceChildren();
  $("similar-results").replaceChildren();
  $("similar-notices").replaceChildren();
  $("similar-summary").textContent = "";
  const img = $("item-image");
  img.removeAttribute("src");
  try {
    const info = await getJSON(`/images/${id}/info`);
    if (mine !== opened) return;
    item = info;
    render();
    img.alt = `${info.label} image ${info.id}, as the service renders it`;
    releaseImages(img);
    loadImage(img, info.image_url).catch((err) => {
      $("item-caption").textContent = `The image could not be loaded: ${err.detail || err.message}`;
    });
    similar();
  } catch (err) {
    if (mine !== opened) return;
    show($("item-body"), false);
    showError($("item-error"), err);
  }
}

function render() {
  $("item-title").textContent = `Image ${item.id}`;
  $("item-subtitle").textContent = `${item.label} · label ${item.label_source}`;
  $("relabel-select").value = item.label;
  const md = item.metadata || {};
  const known = new Set(["width", "height", "mode"]);
  const pairs = [
    ["Label", item.label],
    ["Label source", item.label_source === "given" ? "given (by a person)" : "predicted (by the model)"],
  ];
  if (typeof item.in_distribution === "boolean") {
    pairs.push(["Distribution", item.in_distribution ? "in distribution" : "out of distribution"]);
  }
  if (md.width && md.height) pairs.push(["Size", `${md.width} × ${md.height} px (${md.mode || "?"})`]);
  for (const [k, v] of Object.entries(item.dicom || {})) pairs.push([`DICOM ${k.replaceAll("_", " ")}`, v]);
  for (const [k, v] of Object.entries(md)) {
    if (!known.has(k)) pairs.push([k.replaceAll("_", " "), typeof v === "object" ? JSON.stringify(v) : v]);
  }
  if (item.viewer_url) {
    pairs.push(["Viewer", el("a", { href: item.viewer_url, target: "_blank",
      rel: "noopener noreferrer", text: "Open in the viewer ↗" })]);
  }
  metaList($("item-meta"), pairs);
  $("item-caption").textContent = keyMetadata(item).join(" · ");
}

async function relabel() {
  if (!item) return;
  const label = $("relabel-select").value;
  const button = $("relabel-submit");
  button.disabled = true;
  show($("item-notice"), false);
  showError($("item-error"), null);
  try {
    const res = await request(`/images/${item.id}`, { method: "PATCH", json: { label } });
    item = { ...item, ...(await res.json()) };
    render();
    const note = $("item-notice");
    note.textContent = `Label saved: ${item.label} (given). The image now belongs to ${item.label} in the index.`;
    show(note);
  } catch (err) {
    showError($("item-error"), err);
  } finally {
    button.disabled = false;
  }
}

async function remove() {
  if (!item) return;
  const ok = await confirmDialog(`Delete image ${item.id}?`,
    `Image ${item.id} (${item.label}) will be removed from the store and the index. This cannot be undone.`);
  if (!ok) {
    $("delete-button").focus();
    return;
  }
  showError($("item-error"), null);
  try {
    await request(`/images/${item.id}`, { method: "DELETE" });
    flashGallery(`Image ${item.id} was deleted.`);
    refreshHealth();
    window.location.hash = galleryHash();
  } catch (err) {
    showError($("item-error"), err);
    $("delete-button").focus();
  }
}

let searching = 0;

async function similar() {
  if (!item) return;
  const mine = ++searching;
  const list = $("similar-results");
  const k = clampK($("similar-k"));
  const { scope, params } = scopeParams($("similar-scope").value);
  setBusy(list, "loading");
  showError($("similar-error"), null);
  try {
    const body = await getJSON(`/images/${item.id}/similar`, { k, ...params });
    if (mine !== searching) return;
    const notices = searchNotices(body, scope);
    const chart = el("details", { class: "panel prediction compact" },
      el("summary", {}, `The model predicts ${body.prediction.label} for this image`),
      ...predictionChart(body.prediction));
    $("similar-notices").replaceChildren(...notices, chart);
    fillGrid(list, body.results, { ranked: true });
    $("similar-summary").textContent = body.results.length
      ? `${body.results.length} most similar, the image itself left out`
      : "No other stored images in this scope.";
    setBusy(list, "done");
  } catch (err) {
    if (mine !== searching) return;
    releaseImages(list);
    list.replaceChildren();
    showError($("similar-error"), err);
    setBusy(list, "error");
  }
}
