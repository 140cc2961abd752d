// The page: wait for the service, learn what it offers, then route #/view URLs.

import { features, health } from "./api.js";
import { enterGallery, initGallery } from "./gallery.js";
import { enterIngest, initIngest } from "./ingest.js";
import { enterItem, initItem } from "./item.js";
import { enterSearch, initSearch } from "./search.js";
import { enterStatus, healthChip, initStatus } from "./status.js";
import { $, show } from "./ui.js";

const VIEWS = {
  search: { enter: enterSearch },
  gallery: { enter: (rest, query) => enterGallery(query) },
  item: { enter: (rest) => enterItem(Number(rest)) },
  ingest: { enter: enterIngest },
  status: { enter: enterStatus },
};

let routed = false;

function route() {
  const hash = window.location.hash || "#/search";
  const [path, search = ""] = hash.slice(2).split("?");
  const [name, rest] = path.split("/");
  const view = VIEWS[name] && !(name === "item" && !/^[1-9][0-9]*$/.test(rest || "")) ? name : "search";
  for (const key of Object.keys(VIEWS)) show($(`view-${key}`), key === view);
  for (const link of document.querySelectorAll("[data-nav]")) {
    const current = link.dataset.nav === view || (view === "item" && link.dataset.nav === "gallery");
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${view === "item" ? `Image ${rest}` : view[0].toUpperCase() + view.slice(1)} · cbmir`;
  VIEWS[view].enter(rest, new URLSearchParams(search));
  // After a navigation (not the first load), move focus to the new view's heading.
  if (routed) $(`view-${view}`).querySelector("h1")?.focus({ preventScroll: false });
  routed = true;
}

function banner(kind, text) {
  const node = $("banner");
  node.className = `notice notice-${kind}`;
  node.textContent = text;
  node.setAttribute("role", kind === "error" ? "alert" : "status");
  show(node, Boolean(text));
}

async function waitForService() {
  for (let delay = 500; ; delay = Math.min(delay * 1.5, 5000)) {
    const h = await health();
    healthChip(h);
    if (h.status === "ok") {
      banner("info", "");
      return h;
    }
    banner(h.status === "starting" ? "info" : "error", h.status === "starting"
      ? "The service is starting: the model and the index are loading…"
      : `The service is not available: ${h.detail || h.status}. Retrying…`);
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}

async function boot() {
  const h = await waitForService();
  const server = { classes: h.model.classes, features: await features(), health: h };
  initSearch(server);
  initGallery(server);
  initItem(server);
  initIngest(server);
  initStatus(server);
  window.addEventListener("hashchange", route);
  route();
  document.body.dataset.ready = "true";
}

boot();
