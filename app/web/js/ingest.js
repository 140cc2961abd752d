// Ingest: many files or a folder, each its own POST /index, so each file gets its own
// answer (added, duplicate, or refused with the service's reason). A few at a time.

import { request } from "./api.js";
import { $, bytes, dropTarget, el, show } from "./ui.js";
import { refreshHealth } from "./status.js";

const CONCURRENT = 3;
let classes = [];
const queue = [];
let active = 0;
const counts = { total: 0, done: 0, added: 0, duplicate: 0, refused: 0 };

export function initIngest(server) {
  classes = server.classes;
  $("ingest-label-classes").replaceChildren(
    ...classes.map((c) => el("option", { value: c, text: c })));
  for (const id of ["ingest-files", "ingest-folder"]) {
    const input = $(id);
    input.addEventListener("change", () => {
      add([...input.files].map((f) => ({ file: f, path: f.webkitRelativePath || f.name })));
      input.value = "";
    });
  }
  dropTarget($("ingest-drop"), async (files, transfer) => {
    add(await dropped(files, transfer));
  });
}

export function enterIngest() {}

// Files of a drop, folders walked (FileSystemEntry API), hidden files left out.
async function dropped(files, transfer) {
  const entries = [...(transfer.items || [])].map((i) => i.webkitGetAsEntry?.()).filter(Boolean);
  if (!entries.length) return [...files].map((f) => ({ file: f, path: f.name }));
  const out = [];
  async function walk(entry, prefix) {
    if (entry.name.startsWith(".")) return;
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      out.push({ file, path: prefix + entry.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child, `${prefix}${entry.name}/`);
      }
    }
  }
  for (const entry of entries) await walk(entry, "");
  return out;
}

function labelFor(path) {
  const mode = $("ingest-label").value;
  if (mode === "@folder") {
    const parts = path.split("/");
    const folder = parts.length > 1 ? parts[parts.length - 2] : "";
    return classes.includes(folder) ? folder : "";
  }
  return mode;
}

function add(entries) {
  const body = $("ingest-table").tBodies[0];
  for (const entry of entries.filter((e) => !e.file.name.startsWith("."))) {
    const status = el("td", { class: "status", "data-state": "queued", text: "queued" });
    const row = el("tr", {}, el("td", { class: "file", text: entry.path }),
      el("td", { class: "num", text: bytes(entry.file.size) }), status);
    body.append(row);
    queue.push({ ...entry, label: labelFor(entry.path), status });
    counts.total += 1;
  }
  show($("ingest-table"), counts.total > 0);
  show($("ingest-progress-block"), counts.total > 0);
  progress();
  pump();
}

function pump() {
  while (active < CONCURRENT && queue.length) {
    active += 1;
    send(queue.shift()).finally(() => {
      active -= 1;
      progress();
      pump();
      if (!active && !queue.length) refreshHealth();
    });
  }
}

async function send(job) {
  setStatus(job.status, "sending", "sending…");
  const form = new FormData();
  form.append("files", job.file, job.file.name);
  if (job.label) form.append("label", job.label);
  try {
    const res = await request("/index", { method: "POST", body: form });
    const [it] = (await res.json()).items;
    const link = el("a", { href: `#/item/${it.id}`, text: `id ${it.id}` });
    if (it.duplicate) {
      counts.duplicate += 1;
      setStatus(job.status, "duplicate", "duplicate of ", link, ` (${it.label})`);
    } else {
      counts.added += 1;
      setStatus(job.status, "added", "added as ", link, `: ${it.label}, ${it.label_source}`);
    }
  } catch (err) {
    counts.refused += 1;
    setStatus(job.status, "refused", `refused: ${err.detail || err.message}`);
  } finally {
    counts.done += 1;
  }
}

function setStatus(cell, state, ...content) {
  cell.dataset.state = state;
  cell.replaceChildren(...content);
}

function progress() {
  const bar = $("ingest-progress");
  bar.max = Math.max(1, counts.total);
  bar.value = counts.done;
  const finished = counts.done === counts.total;
  $("ingest-summary").textContent = finished
    ? `Done: ${counts.total} file${counts.total === 1 ? "" : "s"}`
    : `${counts.done} of ${counts.total} files`;
  $("ingest-counts").textContent =
    `${counts.added} added · ${counts.duplicate} duplicate · ${counts.refused} refused`;
  $("ingest-progress-block").dataset.state = finished ? "done" : "running";
}
