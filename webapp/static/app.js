// Docket browser UI: upload, follow background jobs, search. No frameworks, no build step.
// All server-provided text is inserted with textContent, never innerHTML.
"use strict";

const ACTIVE_STATUSES = new Set(["queued", "started", "deferred", "scheduled"]);
const STAGE_LABELS = { extract: "Extracting text", chunk: "Chunking", embed: "Embedding", store: "Storing" };
const TYPE_LABELS = { "application/pdf": "PDF", "text/html": "HTML", "text/plain": "Text", "text/markdown": "Markdown",
  "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "Word" };
const POLL_INTERVAL_MS = 1000; // each running job is checked about once a second...
const MAX_POLLS_PER_SECOND = 6; // ...but never more than this many job requests per second in total
const TICK_MS = 250;
const MAX_BACKOFF_MS = 30000;
const SNIPPET_CHARS = 400;

const $ = (id) => document.getElementById(id);
const trackers = new Map(); // document id -> {doc, els, jobUrl, nextPollAt, failures, inFlight, stage}
const recentPolls = []; // start times of job requests in the last second (rate limit)

// ---------- small helpers ----------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function plural(n, word) {
  return `${Number(n).toLocaleString()} ${word}${n === 1 ? "" : "s"}`;
}

function formatBytes(bytes) {
  if (typeof bytes !== "number" || !isFinite(bytes)) return "";
  if (bytes < 1024) return plural(bytes, "byte");
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

function formatDate(iso) {
  const date = new Date(iso);
  return iso && !isNaN(date) ? date.toLocaleString() : iso || "";
}

function formatPages(start, end) {
  if (start == null) return "";
  return end == null || end === start ? `p. ${start}` : `pp. ${start}–${end}`;
}

function announce(text) {
  $("announcer").textContent = text;
}

// Parse a fetch Response; returns {ok, status, data}. Non-JSON bodies give data = null.
async function readResponse(response) {
  let data = null;
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) {
    try { data = await response.json(); } catch (_) { data = null; }
  }
  return { ok: response.ok, status: response.status, data };
}

// Human sentence for a failed request: the server's own message when it sent JSON,
// otherwise a generic sentence with the HTTP status (e.g. a proxy's HTML 413 page).
function errorMessage(result) {
  const message = result.data && result.data.error && result.data.error.message;
  if (message) return message;
  if (result.status === 413) {
    const mb = $("upload-form").dataset.maxUploadMb;
    return `The upload is too large (HTTP 413). The limit is ${mb} MB per upload.`;
  }
  return `The server answered with an unexpected error (HTTP ${result.status}). Please try again.`;
}

async function getJson(url, options) {
  const response = await fetch(url, Object.assign({ headers: { Accept: "application/json" } }, options));
  return readResponse(response);
}

const NETWORK_ERROR = "Could not reach the server. Check your connection and try again.";

// ---------- document list ----------

// Plain-words outcome for a document in a terminal status: {text, kind}.
function describeOutcome(doc) {
  const warnings = doc.warnings || [];
  if (doc.status === "failed") return { text: `Failed: ${doc.error || "unknown error"}`, kind: "failed" };
  if (doc.status === "stopped" || doc.status === "canceled") {
    const word = doc.status === "stopped" ? "Stopped" : "Canceled";
    return { text: doc.error ? `${word}: ${doc.error}` : word, kind: "failed" };
  }
  if (!doc.chunks) {
    if (warnings.length === 1) return { text: `Finished with a warning: ${warnings[0]}`, kind: "warning", inline: true };
    if (warnings.length > 1) return { text: `Finished with ${warnings.length} warnings: ${warnings.join("; ")}`, kind: "warning", inline: true };
    return { text: "Finished, but no text was found (0 chunks)", kind: "warning" };
  }
  const pages = doc.pages ? ` from ${plural(doc.pages, "page")}` : "";
  const chars = typeof doc.chars === "number" ? ` (${plural(doc.chars, "character")})` : "";
  return { text: `Finished: ${plural(doc.chunks, "chunk")}${pages}${chars}`, kind: warnings.length ? "warning" : "finished" };
}

function renderDocument(doc) {
  const item = el("li", "doc");
  const head = el("div", "doc-head");
  head.append(el("span", "doc-name", doc.filename || "(unnamed)"));
  const meta = [TYPE_LABELS[doc.content_type] || doc.content_type, formatBytes(doc.bytes), formatDate(doc.created_at)];
  head.append(el("span", "doc-meta", meta.filter(Boolean).join(" · ")));
  const progress = el("progress");
  progress.max = 100;
  progress.value = 0;
  progress.setAttribute("aria-label", `Progress for ${doc.filename || "document"}`);
  const status = el("p", "doc-status");
  const warnings = el("ul", "doc-warnings");
  item.append(head, progress, status, warnings);
  return { item, progress, status, warnings };
}

function setStatus(els, text, kind, hideProgress = true) {
  els.progress.hidden = hideProgress;
  els.status.textContent = text;
  els.status.dataset.kind = kind;
}

function showWarnings(els, warnings) {
  els.warnings.replaceChildren(...(warnings || []).map((w) => el("li", null, `Warning: ${w}`)));
}

function showOutcome(tracker) {
  const { doc, els } = tracker;
  const outcome = describeOutcome(doc);
  setStatus(els, outcome.text, outcome.kind);
  // When the warnings are already part of the headline, don't repeat them below.
  showWarnings(els, outcome.inline ? [] : doc.warnings);
  return outcome;
}

function showJobState(tracker, job) {
  const { els } = tracker;
  const progress = Math.max(0, Math.min(100, Number(job.progress) || 0));
  els.progress.value = progress;
  let text;
  if (job.status === "started") text = `${STAGE_LABELS[job.stage] || "Working"}… ${progress}%`;
  else if (job.status === "deferred") text = "Waiting for another job (deferred)";
  else if (job.status === "scheduled") text = "Scheduled";
  else text = "Queued — waiting for a worker";
  setStatus(els, text, "active", false);
  // Announce stage changes only, not every percentage tick.
  const stageKey = `${job.status}/${job.stage}`;
  if (stageKey !== tracker.stage) {
    tracker.stage = stageKey;
    announce(`${tracker.doc.filename}: ${text.replace(/… \d+%$/, "")}`);
  }
}

// Add (or replace) a document in the list; start tracking its job if it is still running.
function addDocument(doc, { prepend = false, jobUrl = null } = {}) {
  const old = trackers.get(doc.id);
  if (old) old.els.item.remove();
  const els = renderDocument(doc);
  const list = $("documents");
  if (prepend) list.prepend(els.item); else list.append(els.item);
  const tracker = { doc, els, jobUrl, nextPollAt: 0, failures: 0, inFlight: false, stage: null };
  trackers.set(doc.id, tracker);
  if (ACTIVE_STATUSES.has(doc.status) && (jobUrl || doc.job_id)) {
    tracker.jobUrl = jobUrl || `/api/jobs/${encodeURIComponent(doc.job_id)}`;
    showJobState(tracker, { status: doc.status, progress: 0, stage: null });
  } else {
    tracker.jobUrl = null;
    showOutcome(tracker);
  }
  $("documents-message").textContent = "";
}

async function loadDocuments() {
  const message = $("documents-message");
  message.textContent = "Loading documents…";
  try {
    const result = await getJson("/api/documents?limit=20");
    if (!result.ok) { message.textContent = errorMessage(result); return; }
    trackers.clear();
    $("documents").replaceChildren();
    const docs = (result.data && result.data.documents) || [];
    docs.forEach((doc) => addDocument(doc));
    message.textContent = docs.length ? "" : "No documents yet. Upload one above.";
  } catch (_) {
    message.textContent = NETWORK_ERROR;
  }
}

// ---------- job polling ----------

// Called when the job reached a terminal status (job given) or vanished (job null):
// fetch the document once and show its outcome.
async function finishTracking(tracker, job) {
  tracker.jobUrl = null;
  const { els } = tracker;
  let loaded = false;
  try {
    const result = await getJson(`/api/documents/${encodeURIComponent(tracker.doc.id)}`);
    if (result.ok && result.data) {
      tracker.doc = result.data.document || result.data; // accept a bare or wrapped document
      loaded = true;
    }
  } catch (_) { /* handled below */ }
  const doc = tracker.doc;
  if (!job && (!loaded || ACTIVE_STATUSES.has(doc.status))) {
    return setStatus(els, "The server does not know this job (it may have expired).", "failed");
  }
  if (job && (!doc.status || ACTIVE_STATUSES.has(doc.status))) {
    // The document record may lag behind the job; trust the job's terminal status.
    doc.status = job.status;
    doc.error = doc.error || job.error;
  }
  if (!loaded && doc.status === "finished") {
    return setStatus(els, "Finished (could not load the details; press Refresh).", "finished");
  }
  announce(`${doc.filename}: ${showOutcome(tracker).text}`);
}

async function pollJob(tracker) {
  tracker.inFlight = true;
  const startedAt = Date.now();
  try {
    const result = await getJson(tracker.jobUrl);
    if (result.status === 404) return await finishTracking(tracker, null); // job unknown: stop polling
    if (!result.ok || !result.data) throw new Error(`HTTP ${result.status}`);
    tracker.failures = 0;
    tracker.nextPollAt = startedAt + POLL_INTERVAL_MS;
    const job = Object.assign({}, result.data, { status: result.data.status || result.data.rq_status });
    if (ACTIVE_STATUSES.has(job.status)) showJobState(tracker, job);
    else await finishTracking(tracker, job);
  } catch (_) {
    // Network trouble or server error: back off exponentially (2 s, 4 s, … 30 s).
    tracker.failures += 1;
    const delay = Math.min(MAX_BACKOFF_MS, POLL_INTERVAL_MS * 2 ** tracker.failures);
    tracker.nextPollAt = Date.now() + delay;
    tracker.els.status.textContent = `Could not check progress; retrying in ${Math.round(delay / 1000)} s…`;
  } finally {
    tracker.inFlight = false;
  }
}

// One shared timer polls the jobs that are due, longest-waiting first. A sliding one-second
// window caps the total request rate, so with many running jobs each is simply polled less often.
function pollTick() {
  if (document.hidden) return; // don't poll in a background tab
  const now = Date.now();
  while (recentPolls.length && recentPolls[0] <= now - 1000) recentPolls.shift();
  const budget = MAX_POLLS_PER_SECOND - recentPolls.length;
  if (budget <= 0) return;
  const due = [...trackers.values()]
    .filter((t) => t.jobUrl && !t.inFlight && t.nextPollAt <= now)
    .sort((a, b) => a.nextPollAt - b.nextPollAt)
    .slice(0, budget);
  due.forEach((tracker) => { recentPolls.push(now); pollJob(tracker); });
}

// ---------- upload ----------

async function handleUpload(event) {
  event.preventDefault();
  const fileInput = $("upload-file");
  const password = $("upload-password").value;
  const errorBox = $("upload-error");
  const statusBox = $("upload-status");
  const button = $("upload-button");
  errorBox.textContent = "";
  const files = [...fileInput.files];
  if (!files.length) {
    errorBox.textContent = "Choose at least one file to upload.";
    return fileInput.focus();
  }
  const body = new FormData();
  files.forEach((file) => body.append("file", file, file.name));
  if (password) body.append("password", password);

  button.disabled = true;
  statusBox.textContent = `Uploading ${plural(files.length, "file")}…`;
  try {
    const result = await readResponse(await fetch("/api/documents", { method: "POST", body }));
    if (!result.ok) {
      statusBox.textContent = "";
      errorBox.textContent = errorMessage(result);
      return;
    }
    const docs = (result.data && result.data.documents) || [];
    // Show newest at the top; sizes/types come from the local files (assumes same order as sent).
    docs.forEach((d, i) => {
      const file = files[i] && files[i].name === d.filename ? files[i] : null;
      const doc = Object.assign({ status: "queued", warnings: [], created_at: new Date().toISOString() }, d,
        file ? { bytes: file.size, content_type: file.type } : {});
      addDocument(doc, { prepend: true, jobUrl: d.status_url || null });
    });
    statusBox.textContent = `Uploaded ${plural(docs.length, "file")}; processing in the background.`;
    $("upload-form").reset();
  } catch (_) {
    statusBox.textContent = "";
    errorBox.textContent = NETWORK_ERROR;
  } finally {
    button.disabled = false;
  }
}

// ---------- search ----------

let searchSeq = 0; // ignore answers to searches that were superseded

function renderResult(hit) {
  const item = el("li", "result");
  const head = el("div", "result-head");
  head.append(el("span", "result-name", hit.filename));
  const pages = formatPages(hit.page_start, hit.page_end);
  if (pages) head.append(el("span", "result-pages", pages));
  const score = typeof hit.score === "number" ? hit.score.toFixed(3) : "–";
  head.append(el("span", "result-score", `score ${score}`));
  const text = hit.text || "";
  const para = el("p", "result-text");
  item.append(head, para);
  if (text.length <= SNIPPET_CHARS) {
    para.textContent = text;
    return item;
  }
  // Long chunk: show a snippet, with a button to expand to the full text.
  const snippet = `${text.slice(0, SNIPPET_CHARS).trimEnd()}…`;
  para.textContent = snippet;
  const toggle = el("button", "link-button", "Show more");
  toggle.type = "button";
  toggle.setAttribute("aria-expanded", "false");
  toggle.addEventListener("click", () => {
    const expanded = toggle.getAttribute("aria-expanded") === "true";
    para.textContent = expanded ? snippet : text;
    toggle.textContent = expanded ? "Show more" : "Show less";
    toggle.setAttribute("aria-expanded", String(!expanded));
  });
  item.append(toggle);
  return item;
}

async function handleSearch(event) {
  event.preventDefault();
  const query = $("search-q").value.trim();
  const errorBox = $("search-error");
  const summary = $("search-summary");
  const list = $("search-results");
  const seq = ++searchSeq;
  errorBox.textContent = "";
  summary.textContent = "Searching…";
  try {
    const result = await getJson(`/api/search?q=${encodeURIComponent(query)}&k=5`);
    if (seq !== searchSeq) return;
    if (!result.ok) {
      summary.textContent = "";
      list.replaceChildren();
      errorBox.textContent = errorMessage(result);
      return;
    }
    const hits = (result.data && result.data.results) || [];
    list.replaceChildren(...hits.map(renderResult));
    summary.textContent = hits.length ? `${plural(hits.length, "result")} for “${query}”` : `No matches for “${query}”.`;
  } catch (_) {
    if (seq !== searchSeq) return;
    summary.textContent = "";
    errorBox.textContent = NETWORK_ERROR;
  }
}

// ---------- start ----------

document.addEventListener("DOMContentLoaded", () => {
  $("upload-form").addEventListener("submit", handleUpload);
  $("search-form").addEventListener("submit", handleSearch);
  $("refresh-button").addEventListener("click", loadDocuments);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) pollTick(); });
  setInterval(pollTick, TICK_MS);
  loadDocuments();
});
