// The page's only door to the service: fetch with the API key when there is one, the
// API's one-line error detail on failure, images as blob URLs (so an <img> never needs
// the key), and what this server offers (read from /health and /openapi.json).

const KEY_STORAGE = "cbmir.apiKey";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

export function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

// One dialog at a time: requests that get a 401 together wait for the same answer.
let pendingKey = null;

function askForKey(message) {
  if (pendingKey) return pendingKey;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-dialog-message").textContent = message;
  input.value = "";
  pendingKey = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const key = dialog.returnValue === "ok" ? input.value.trim() : "";
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      pendingKey = null;
      resolve(key || null);
    }, { once: true });
  });
  dialog.returnValue = "";
  dialog.showModal();
  input.focus();
  return pendingKey;
}

async function detailOf(res) {
  try {
    const body = await res.json();
    if (typeof body.detail === "string") return body.detail;
  } catch {
    // not JSON: fall through
  }
  return `${res.status} ${res.statusText || "error"}`;
}

function urlOf(path, params) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "" && value !== false) {
      url.searchParams.set(name, String(value));
    }
  }
  return url;
}

// fetch(path) with X-API-Key; a 401 asks for the key (once for concurrent requests) and
// retries. Resolves to the Response of a 2xx/304, rejects with ApiError(status, detail).
export async function request(path, { method = "GET", params, body, json, signal } = {}) {
  let refused = false;
  for (;;) {
    const key = storedKey();
    const headers = {};
    if (key) headers["X-API-Key"] = key;
    let payload = body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(json);
    }
    let res;
    try {
      res = await fetch(urlOf(path, params), { method, headers, body: payload, signal });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "the service cannot be reached");
    }
    if (res.status === 401) {
      const detail = await detailOf(res);
      if (storedKey() !== key) continue; // a key was entered meanwhile: try it
      const answer = await askForKey(refused || key
        ? "That key was refused. Enter the service's API key."
        : "This action needs the service's API key. It is kept for this browser session only.");
      if (answer === null) throw new ApiError(401, detail);
      refused = true;
      continue;
    }
    if (!res.ok && res.status !== 304) throw new ApiError(res.status, await detailOf(res));
    return res;
  }
}

export async function getJSON(path, params, signal) {
  return (await request(path, { params, signal })).json();
}

// Images through fetch, into blob: URLs. Each container remembers its URLs, so they are
// revoked when it is filled again (no leak while browsing page after page).
const blobs = new WeakMap();

export function releaseImages(container) {
  for (const url of blobs.get(container) || []) URL.revokeObjectURL(url);
  blobs.set(container, []);
}

export async function showBlob(img, blob, container) {
  const url = URL.createObjectURL(blob);
  const owner = container || img;
  if (!blobs.has(owner)) blobs.set(owner, []);
  blobs.get(owner).push(url);
  img.src = url;
  await img.decode().catch(() => {});
}

export async function loadImage(img, path, container) {
  const res = await request(path);
  await showBlob(img, await res.blob(), container);
}

// A few images at a time, so a grid of thumbnails does not hold up a search request.
const MAX_IMAGE_LOADS = 4;
let active = 0;
const waiting = [];

export function queueImage(img, path, container) {
  return new Promise((resolve) => {
    waiting.push(async () => {
      try {
        await loadImage(img, path, container);
        img.closest(".thumb")?.setAttribute("data-state", "loaded");
      } catch (err) {
        img.closest(".thumb")?.setAttribute("data-state", "failed");
        img.alt = `${img.alt} (not loaded: ${err.detail || err.message})`;
      } finally {
        active -= 1;
        next();
        resolve();
      }
    });
    next();
  });
}

function next() {
  while (active < MAX_IMAGE_LOADS && waiting.length) {
    active += 1;
    waiting.shift()();
  }
}

// What this server offers: /health (model, classes, index) and the parameters of the
// routes whose options depend on the server's version (DICOM grouping, OOD filter).
export async function health() {
  let res;
  try {
    res = await fetch("/health", { cache: "no-store" });
  } catch {
    return { status: "unreachable", detail: "the service cannot be reached" };
  }
  try {
    return await res.json();
  } catch {
    return { status: "unreachable", detail: `/health answered ${res.status}` };
  }
}

export async function features() {
  const found = { searchParams: new Set(), listParams: new Set() };
  try {
    const spec = await (await fetch("/openapi.json")).json();
    const names = (op) => new Set((op?.parameters || []).map((p) => p.name));
    found.searchParams = names(spec.paths?.["/search"]?.post);
    found.listParams = names(spec.paths?.["/images"]?.get);
  } catch {
    // an older server without the schema: offer only what every version has
  }
  return found;
}
