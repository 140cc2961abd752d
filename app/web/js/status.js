// Status: what the service has loaded (GET /health), and the header's health chip.

import { forgetKey, getJSON, health, storedKey } from "./api.js";
import { $, el, metaList, showError } from "./ui.js";

let classes = [];

export function initStatus(server) {
  classes = server.classes;
  $("status-refresh").addEventListener("click", enterStatus);
  $("forget-key").addEventListener("click", () => {
    forgetKey();
    keyLine();
  });
}

function keyLine() {
  $("status-key").textContent = storedKey()
    ? "A key is kept for this browser session and sent with every request."
    : "No key entered. The page asks for one when the service needs it.";
  $("forget-key").disabled = !storedKey();
}

export function healthChip(h) {
  const chip = $("health-chip");
  chip.dataset.state = h.status;
  $("health-text").textContent = h.status === "ok"
    ? `${h.model.name} · ${h.index.size} image${h.index.size === 1 ? "" : "s"}`
    : h.status === "starting" ? "Starting…" : "Unavailable";
  chip.title = h.status === "ok" ? `Service healthy, ${h.model.device}` : h.detail || h.status;
}

export async function refreshHealth() {
  const h = await health();
  healthChip(h);
  return h;
}

export async function enterStatus() {
  keyLine();
  showError($("status-error"), null);
  const h = await refreshHealth();
  if (h.status !== "ok") {
    showError($("status-error"), { detail: `Service ${h.status}${h.detail ? `: ${h.detail}` : ""}` });
    return;
  }
  const model = [
    ["Health", "ok"],
    ["Name", h.model.name],
    ["Classes", h.model.classes.join(", ")],
    ["Device", h.model.device],
    ["Embedding", `${h.model.embedding_dim} dimensions`],
  ];
  if (h.model.ood) {
    // issue 10: the out-of-distribution check, shown whatever fields it brings.
    for (const [k, v] of Object.entries(h.model.ood)) {
      model.push([`OOD ${k.replaceAll("_", " ")}`, typeof v === "number" ? v.toFixed(4) : v]);
    }
  }
  metaList($("status-model"), model);
  const index = [
    ["Images", h.index.size],
    ["Backend", h.index.backend],
    ["Type", h.index.type],
  ];
  for (const [k, v] of Object.entries(h.index)) {
    if (!["size", "backend", "type"].includes(k)) index.push([k.replaceAll("_", " "), v]);
  }
  metaList($("status-index"), index);
  classCounts(h.index.size);
}

async function classCounts(size) {
  const list = $("status-classes");
  list.dataset.state = "loading";
  try {
    const totals = await Promise.all(classes.map(
      (c) => getJSON("/images", { label: c, limit: 1 }).then((b) => b.total)));
    const most = Math.max(1, ...totals);
    list.replaceChildren(...classes.map((c, i) => {
      const fill = el("span", { class: "bar-fill" });
      fill.style.width = `${(totals[i] / most) * 100}%`;
      return el("li", { class: "bar" }, el("span", { class: "bar-name", text: c }),
        el("span", { class: "bar-track", "aria-hidden": "true" }, fill),
        el("span", { class: "bar-value", text: String(totals[i]) }));
    }));
    list.dataset.state = "done";
    list.setAttribute("aria-label", `${size} stored images by class`);
  } catch (err) {
    list.replaceChildren(el("li", { class: "muted", text: err.detail || err.message }));
    list.dataset.state = "error";
  }
}
