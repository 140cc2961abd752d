// Small DOM helpers and the pieces several views share: result cards, the prediction
// chart, notices. Text always goes in through textContent, never as HTML.

import { queueImage, releaseImages } from "./api.js";

const PROPERTIES = new Set(["value", "checked", "selected", "disabled", "hidden"]);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (PROPERTIES.has(name)) node[name] = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (id) => document.getElementById(id);

export function show(node, visible = true) {
  node.hidden = !visible;
}

export function showError(node, err) {
  if (!err) {
    node.hidden = true;
    node.textContent = "";
    return;
  }
  node.textContent = err.detail || err.message || String(err);
  node.hidden = false;
}

export function setBusy(list, state) {
  list.dataset.state = state;
  list.setAttribute("aria-busy", String(state === "loading"));
}

export const percent = (p) => `${(p * 100).toFixed(p >= 0.995 || p < 0.001 ? 0 : 1)}%`;
export const score = (s) => s.toFixed(3);

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export const SOURCE_TEXT = { given: "given", predicted: "predicted" };
export const SCOPE_TEXT = {
  predicted: "the predicted class",
  all: "all classes",
  label: "the chosen class",
};

// The fields a person looks for first, from the DICOM block (issue 12) when present,
// else from the stored metadata.
export function keyMetadata(item) {
  const md = item.metadata || {};
  const dicom = item.dicom || {};
  const pick = (...names) => {
    for (const n of names) {
      const v = dicom[n] ?? md[n];
      if (v !== undefined && v !== null && v !== "") return String(v);
    }
    return null;
  };
  const parts = [pick("modality"), pick("body_part"), pick("series_description")];
  const w = md.width ?? md.columns;
  const h = md.height ?? md.rows;
  if (w && h) parts.push(`${w}×${h}`);
  return parts.filter(Boolean);
}

function sourceBadge(source) {
  return el("span", { class: `badge badge-${source}`, text: SOURCE_TEXT[source] || source,
    title: source === "given" ? "label given by a person" : "label predicted by the model" });
}

// One stored image as a card; `hit.score` present for search results.
export function card(hit, { rank, container } = {}) {
  const title = `Image ${hit.id}, ${hit.label}`;
  const img = el("img", { alt: `${hit.label} image ${hit.id}`, width: 256, height: 256 });
  const thumb = el("div", { class: "thumb", "data-state": "loading" }, img);
  const meta = keyMetadata(hit);
  const links = [el("a", { href: `#/item/${hit.id}`, text: "Open", "aria-label": `Open ${title}` })];
  if (hit.viewer_url) {
    links.push(el("a", { href: hit.viewer_url, target: "_blank", rel: "noopener noreferrer",
      text: "Viewer ↗", "aria-label": `Open ${title} in the viewer (new tab)` }));
  }
  const top = [el("span", { class: "card-id", text: rank ? `#${rank} · id ${hit.id}` : `id ${hit.id}` })];
  if (typeof hit.score === "number") {
    top.push(el("span", { class: "score", text: score(hit.score), title: "cosine similarity" }));
  }
  const node = el("li", { class: "card", "data-id": hit.id, "data-label": hit.label },
    el("a", { class: "card-image", href: `#/item/${hit.id}`, tabindex: -1, "aria-hidden": "true" }, thumb),
    el("div", { class: "card-body" },
      el("div", { class: "card-row" }, ...top),
      el("div", { class: "card-row" },
        el("span", { class: "card-label", text: hit.label }), sourceBadge(hit.label_source)),
      meta.length ? el("p", { class: "card-meta", text: meta.join(" · ") }) : null,
      hit.series_hits ? el("p", { class: "card-meta", text: `${hit.series_hits} slices of this series matched` }) : null,
      el("p", { class: "card-links" }, ...links)));
  queueImage(img, `${hit.image_url}/thumbnail`, container);
  return node;
}

export function fillGrid(list, hits, { ranked = false } = {}) {
  releaseImages(list);
  list.replaceChildren(...hits.map((h, i) => card(h, { rank: ranked ? i + 1 : null, container: list })));
}

// The predicted class and every class's probability as a bar chart.
export function predictionChart(prediction) {
  const probs = Object.entries(prediction.probabilities).sort((a, b) => b[1] - a[1]);
  const rows = probs.map(([name, p]) => {
    const fill = el("span", { class: "bar-fill" });
    fill.style.width = `${p * 100}%`;
    return el("li", { class: name === prediction.label ? "bar is-top" : "bar" },
      el("span", { class: "bar-name", text: name }),
      el("span", { class: "bar-track", "aria-hidden": "true" }, fill),
      el("span", { class: "bar-value", text: percent(p) }));
  });
  const head = el("p", { class: "prediction-head" },
    el("strong", { class: "prediction-label", text: prediction.label }),
    el("span", { class: "muted", text: ` ${percent(prediction.confidence)} confident` }));
  const parts = [head];
  if (typeof prediction.in_distribution === "boolean") {
    const ok = prediction.in_distribution;
    parts.push(el("p", { class: `ood-line ${ok ? "is-ok" : "is-warn"}`,
      text: `${ok ? "In distribution" : "Out of distribution"}${oodNumbers(prediction)}` }));
  }
  parts.push(el("ul", { class: "bars", "aria-label": "Probability of each class" }, rows));
  return parts;
}

function oodNumbers(p) {
  if (typeof p.ood_score !== "number") return "";
  const t = typeof p.ood_threshold === "number" ? ` (threshold ${p.ood_threshold.toFixed(3)})` : "";
  return `: score ${p.ood_score.toFixed(3)}${t}`;
}

// Notices for a search answer: out of distribution, a scope other than the one asked for,
// and the service's own warnings.
export function searchNotices(body, requestedScope) {
  const out = [];
  const p = body.prediction || {};
  if (p.in_distribution === false) {
    out.push(["warn", "This image does not look like the images the model was trained on" +
      `${oodNumbers(p)}. Its predicted class and the results below may not be reliable.`]);
  }
  if (body.scope && body.scope !== requestedScope) {
    out.push(["info", `Searched ${SCOPE_TEXT[body.scope] || body.scope} instead of ` +
      `${SCOPE_TEXT[requestedScope] || requestedScope}.`]);
  }
  for (const w of body.warnings || []) out.push(["warn", w]);
  return out.map(([kind, text]) => el("div", { class: `notice notice-${kind}`, role: "status", text }));
}

// The scope <select> of search and find-similar: "predicted", "all" or "label:<class>".
export function fillScopeClasses(group, classes) {
  group.replaceChildren(...classes.map((c) => el("option", { value: `label:${c}`, text: c })));
}

export function scopeParams(value) {
  if (value.startsWith("label:")) return { scope: "label", params: { label: value.slice(6) } };
  return { scope: value, params: { scope: value } };
}

export function clampK(input) {
  const k = Math.round(Number(input.value));
  const min = Number(input.min) || 1;
  const max = Number(input.max) || 200;
  const ok = Number.isFinite(k) ? Math.min(max, Math.max(min, k)) : 12;
  input.value = String(ok);
  return ok;
}

export function metaList(dl, pairs) {
  dl.replaceChildren(...pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .flatMap(([k, v]) => [el("dt", { text: k[0].toUpperCase() + k.slice(1) }),
      el("dd", {}, v instanceof Node ? v : String(v))]));
}

// A modal yes/no question in the page's own dialog.
export function confirmDialog(title, message, ok = "Delete") {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-message").textContent = message;
  $("confirm-ok").textContent = ok;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

// A drop zone: highlighted while something is dragged over it.
export function dropTarget(zone, onFiles) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("is-dragover");
  });
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("is-dragover");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("is-dragover");
    if (event.dataTransfer.files.length) onFiles(event.dataTransfer.files, event.dataTransfer);
  });
}
