// What both pages share: the API key (kept in localStorage, sent as X-API-Key), fetch helpers,
// and rendering of the API's error envelope {"error": {code, message, details, suggestion}}.

const KEY_STORAGE = "recon.apiKey";

export function apiKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, "X-API-Key": key } : { ...extra };
}

/** Wire the header's API key field: typed once, kept for later visits and for shared job links. */
export function setupKeyField(input) {
  if (!input) return;
  input.value = apiKey();
  input.addEventListener("change", () => {
    try {
      const value = input.value.trim();
      if (value) localStorage.setItem(KEY_STORAGE, value);
      else localStorage.removeItem(KEY_STORAGE);
    } catch {
      /* storage disabled: the key lives for this page only */
    }
    input.dispatchEvent(new CustomEvent("apikeychange", { bubbles: true }));
  });
}

export function apiFetch(path, options = {}) {
  return fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
}

/** The error object of a failed answer: the API's envelope, or one made up for anything else. */
export async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    /* not JSON */
  }
  if (body && body.error && typeof body.error === "object") return body.error;
  return {
    code: `HTTP_${response.status}`,
    message: `The server answered ${response.status} ${response.statusText}`.trim(),
    details: {},
    suggestion: "",
  };
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function detailValue(value) {
  if (Array.isArray(value) && value.every((v) => typeof v !== "object")) {
    return el("ul", {}, value.map((v) => el("li", { text: String(v) })));
  }
  if (value !== null && typeof value === "object") return el("pre", { text: JSON.stringify(value, null, 2) });
  return String(value);
}

/** An error object as people read it: message, what to do, then the details as a list. */
export function renderError(error, title = "") {
  const err = error || {};
  const details = err.details && typeof err.details === "object" ? Object.entries(err.details) : [];
  const hint = err.code === "UNAUTHORIZED" ? "Enter a valid API key at the top right of the page." : "";
  return el(
    "div",
    { class: "error-box", role: "alert" },
    title ? el("div", { class: "muted", text: title }) : null,
    el("div", { class: "code", text: err.code || "ERROR" }),
    el("div", { class: "message", text: err.message || "Something went wrong" }),
    err.suggestion || hint ? el("div", { class: "suggestion", text: err.suggestion || hint }) : null,
    details.length
      ? el("dl", { class: "facts" }, details.map(([k, v]) => [el("dt", { text: k }), el("dd", {}, detailValue(v))]))
      : null,
  );
}

export function formatBytes(n) {
  if (n >= 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(n >= 10 * 1024 * 1024 ? 0 : 1)} MB`;
  if (n >= 1024) return `${Math.round(n / 1024)} KB`;
  return `${n} B`;
}
