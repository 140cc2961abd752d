// Gallery: GET /images with filters, paged by next_cursor (a stack of cursors for "back").

import { getJSON } from "./api.js";
import { $, el, fillGrid, setBusy, show, showError } from "./ui.js";

const FILTERS = {
  // hash parameter → [element id, API parameter]
  label: ["filter-label", "label"],
  source: ["filter-source", "label_source"],
  modality: ["filter-modality", "modality"],
  // in_distribution (issue 10): used only when the server's GET /images offers it.
  ood: ["filter-ood", "in_distribution"],
  limit: ["filter-limit", "limit"],
};

let offered = new Set();
let current = null; // {key, cursors, page}
let flash = "";

export function initGallery(server) {
  offered = server.features.listParams;
  const label = $("filter-label");
  label.append(...server.classes.map((c) => el("option", { value: c, text: c })));
  for (const node of document.querySelectorAll("#view-gallery [data-feature]")) {
    show(node, offered.has(node.dataset.feature));
  }
  $("gallery-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    navigateWithFilters();
  });
  for (const name of ["label", "source", "ood", "limit"]) {
    $(FILTERS[name][0]).addEventListener("change", navigateWithFilters);
  }
  $("page-next").addEventListener("click", () => turn(1));
  $("page-prev").addEventListener("click", () => turn(-1));
}

export function flashGallery(message) {
  flash = message;
}

function navigateWithFilters() {
  const query = new URLSearchParams();
  for (const [name, [id]] of Object.entries(FILTERS)) {
    const value = $(id).value.trim();
    if (value && !(name === "limit" && value === "48")) query.set(name, value);
  }
  const hash = `#/gallery${query.toString() ? `?${query}` : ""}`;
  if (window.location.hash === hash) enterGallery(query, { reload: true });
  else window.location.hash = hash;
}

export function galleryHash() {
  return current ? `#/gallery${current.key ? `?${current.key}` : ""}` : "#/gallery";
}

export function enterGallery(query, { reload = false } = {}) {
  for (const [name, [id]] of Object.entries(FILTERS)) {
    $(id).value = query.get(name) || (name === "limit" ? "48" : "");
  }
  const key = query.toString();
  // Same filters as last time: stay on that page (re-read, it may have changed).
  if (!current || current.key !== key || reload) current = { key, cursors: [null], page: 0 };
  const note = $("gallery-flash");
  note.textContent = flash;
  show(note, Boolean(flash));
  flash = "";
  load();
}

function params() {
  const out = {};
  for (const [name, [id, api]] of Object.entries(FILTERS)) {
    if (name === "ood" && !offered.has("in_distribution")) continue;
    const value = $(id).value.trim();
    if (value) out[api] = value;
  }
  out.cursor = current.cursors[current.page];
  return out;
}

let loading = 0;

async function load() {
  const mine = ++loading;
  const grid = $("gallery-grid");
  setBusy(grid, "loading");
  showError($("gallery-error"), null);
  try {
    const body = await getJSON("/images", params());
    if (mine !== loading) return;
    const limit = Number($("filter-limit").value);
    if (!body.items.length && current.page > 0) {
      // The page emptied (items deleted): go back one.
      current.page -= 1;
      load();
      return;
    }
    current.cursors[current.page + 1] = body.next_cursor;
    fillGrid(grid, body.items);
    show($("gallery-empty"), body.items.length === 0);
    const first = current.page * limit + 1;
    const last = current.page * limit + body.items.length;
    const pages = Math.max(1, Math.ceil(body.total / limit));
    $("gallery-summary").textContent = body.total === 0 ? "No images"
      : `${body.total} image${body.total === 1 ? "" : "s"} · showing ${first}–${last}`;
    $("page-info").textContent = `Page ${current.page + 1} of ${pages}`;
    pagerButtons(current.page === 0, !body.next_cursor);
    setBusy(grid, "done");
  } catch (err) {
    if (mine !== loading) return;
    grid.replaceChildren();
    showError($("gallery-error"), err);
    $("gallery-summary").textContent = "";
    $("page-info").textContent = "";
    setBusy(grid, "error");
  }
}

// Disabling the focused button would drop keyboard focus on the page: hand it to the other.
function pagerButtons(noPrev, noNext) {
  const prev = $("page-prev");
  const next = $("page-next");
  const focused = document.activeElement;
  prev.disabled = noPrev;
  next.disabled = noNext;
  if (focused === prev && noPrev && !noNext) next.focus();
  if (focused === next && noNext && !noPrev) prev.focus();
}

function turn(step) {
  const page = current.page + step;
  if ($("gallery-grid").dataset.state === "loading") return;
  if (page < 0 || (step > 0 && !current.cursors[page])) return;
  current.page = page;
  load();
  $("gallery-title").scrollIntoView({ block: "start", behavior: "instant" });
}
