// Docket's main page: upload (with batch progress), follow and control document jobs, search.
// Needs common.js (loaded before it). All server-provided text is inserted with textContent.
"use strict";

const TYPE_LABELS = { "application/pdf": "PDF", "text/html": "HTML", "text/plain": "Text", "text/markdown": "Markdown",
  "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "Word" };
const BATCH_POLL_INTERVAL_MS = 1500;
const STATUS_ORDER = ["finished", "started", "queued", "scheduled", "deferred", "failed", "stopped", "canceled", "unknown"];
const SNIPPET_CHARS = 400;

const trackers = new Map(); // document id -> {doc, els, controls, poll, live, gen, stage}
const batchPanels = new Map(); // batch id -> {resume()}: follow the batch again after a Retry

function formatPages(start, end) {
  if (start == null) return "";
  return end == null || end === start ? `p. ${start}` : `pp. ${start}–${end}`;
}

// ---------- document list ----------

// Plain-words outcome for a document in a terminal status: {text, kind}.
function describeOutcome(doc) {
  const warnings = doc.warnings || [];
  if (doc.status === "failed") return { text: `Failed: ${doc.error || "unknown error"}`, kind: "failed" };
  if (doc.status === "stopped" || doc.status === "canceled") {
    const word = doc.status === "stopped" ? "Stopped" : "Canceled";
    return { text: doc.error ? `${word}: ${doc.error}` : word, kind: "failed" };
  }
  if (doc.status !== "finished") return { text: doc.status ? `Status: ${doc.status}` : "Status unknown", kind: "failed" };
  if (!doc.chunks) {
    if (warnings.length === 1) return { text: `Finished with a warning: ${warnings[0]}`, kind: "warning", inline: true };
    if (warnings.length > 1) return { text: `Finished with ${warnings.length} warnings: ${warnings.join("; ")}`, kind: "warning", inline: true };
    return { text: "Finished, but no text was found (0 chunks)", kind: "warning" };
  }
  const pages = doc.pages ? ` from ${plural(doc.pages, "page")}` : "";
  const chars = typeof doc.chars === "number" ? ` (${plural(doc.chars, "character")})` : "";
  const ocr = doc.ocr_pages ? `, ${doc.ocr_pages === doc.pages ? "all" : doc.ocr_pages} read by OCR` : "";
  return { text: `Finished: ${plural(doc.chunks, "chunk")}${pages}${chars}${ocr}`, kind: warnings.length ? "warning" : "finished" };
}

function docAnchor(id) {
  return `doc-${id}`;
}

// A document's own page (server-rendered: its facts and chunks); with an ordinal, the page of
// its chunks that holds that chunk, scrolled to it.
function documentUrl(id, ordinal) {
  const base = `/documents/${encodeURIComponent(id)}`;
  return typeof ordinal === "number" ? `${base}?chunk=${ordinal}#chunk-${ordinal}` : base;
}

function renderDocument(tracker) {
  const { doc } = tracker;
  const name = doc.filename || "document";
  const item = el("li", "doc");
  item.id = docAnchor(doc.id);
  item.tabIndex = -1; // "show the existing document" links move the focus here
  const head = el("div", "doc-head");
  const nameLink = el("a", "doc-name", doc.filename || "(unnamed)"); // the document's own page
  nameLink.href = documentUrl(doc.id);
  head.append(nameLink);
  const meta = [TYPE_LABELS[doc.content_type] || doc.content_type, formatBytes(doc.bytes), formatDate(doc.created_at)];
  head.append(el("span", "doc-meta", meta.filter(Boolean).join(" · ")));
  const progress = el("progress");
  progress.max = 100;
  progress.value = 0;
  progress.setAttribute("aria-label", `Progress for ${name}`);
  const status = el("p", "doc-status");
  const detail = el("div", "doc-detail");
  const note = el("p", "doc-note");
  const warnings = el("ul", "doc-warnings");
  const message = el("p", "row-error");
  message.setAttribute("role", "alert");
  const controls = createJobControls({
    subject: `processing of ${name}`,
    getJobId: () => tracker.doc.job_id,
    onChanged: (job) => jobChanged(tracker, job),
    showError: (text) => { message.textContent = text; },
    onRefused: () => follow(tracker), // the job may have moved on (e.g. finished): show where it is
  });
  const remove = button("Delete", "link-button doc-delete", () => deleteDocument(tracker, remove));
  remove.setAttribute("aria-label", `Delete ${name}`);
  item.append(head, progress, status, detail, note, warnings, controls.node, remove, message);
  tracker.controls = controls;
  return { item, progress, status, detail, note, warnings, message };
}

// DELETE /api/documents/<id> after a confirmation: the document, its chunks, stored file and jobs
// are removed (a running job is stopped first); the row leaves the list.
async function deleteDocument(tracker, control) {
  const name = tracker.doc.filename || "this document";
  if (!window.confirm(`Delete ${name}, its chunks and its jobs? This cannot be undone.`)) return;
  control.disabled = true;
  try {
    const result = await readResponse(await fetch(`/api/documents/${encodeURIComponent(tracker.doc.id)}`,
      { method: "DELETE", headers: csrfHeaders({ Accept: "application/json" }) }));
    if (!result.ok && result.status !== 404) {
      tracker.els.message.textContent = errorMessage(result);
      return;
    }
    stopFollowing(tracker);
    tracker.els.item.remove();
    trackers.delete(tracker.doc.id);
    announce(`${name} deleted`);
  } catch (_) {
    tracker.els.message.textContent = NETWORK_ERROR;
  } finally {
    control.disabled = false;
  }
}

function setStatus(els, text, kind, hideProgress = true) {
  els.progress.hidden = hideProgress;
  els.status.textContent = text;
  els.status.dataset.kind = kind;
}

function showDetail(tracker, job, options) {
  const line = job ? jobDetail(job, options) : null;
  tracker.els.detail.replaceChildren(...(line ? [line] : []));
}

function showWarnings(els, warnings) {
  els.warnings.replaceChildren(...(warnings || []).map((w) => el("li", null, `Warning: ${w}`)));
}

function showOutcome(tracker, job = null) {
  const { doc, els } = tracker;
  const outcome = describeOutcome(doc);
  setStatus(els, outcome.text, outcome.kind);
  showDetail(tracker, Object.assign({ error_code: doc.error_code }, job || {}, { status: doc.status }));
  // When the warnings are already part of the headline, don't repeat them below.
  showWarnings(els, outcome.inline ? [] : doc.warnings);
  tracker.controls.update(doc.status);
  return outcome;
}

function showJobState(tracker, job) {
  const { els } = tracker;
  els.progress.value = clampProgress(job.progress);
  const text = describeActiveJob(job);
  setStatus(els, text, "active", false);
  showDetail(tracker, job, { includeError: job.status === "scheduled" });
  showWarnings(els, []);
  tracker.controls.update(job.status);
  // Announce stage changes only, not every percentage tick.
  const stageKey = `${job.status}/${job.stage}`;
  if (stageKey !== tracker.stage) {
    tracker.stage = stageKey;
    announce(`${tracker.doc.filename}: ${text.replace(/… \d+%.*$/, "")}`);
  }
}

// Follow the document's job until it ends: live from its event stream, else by polling (see
// followLive). Answers and events that arrive after the last Cancel/Retry (tracker.gen changed
// meanwhile) are ignored, so a late "started" cannot undo a "stopped".
function follow(tracker, jobUrl = null) {
  stopFollowing(tracker);
  const jobId = encodeURIComponent(tracker.doc.job_id);
  const url = jobUrl || `/api/jobs/${jobId}`;
  const gen = tracker.gen;
  const show = (job) => {
    if (ACTIVE_STATUSES.has(job.status)) { showJobState(tracker, job); return true; }
    finishTracking(tracker, job);
    return false;
  };
  tracker.poll = {
    step: async () => {
      const result = await getJson(url);
      if (gen !== tracker.gen) return false;
      if (result.status === 404) { await finishTracking(tracker, null); return false; }
      if (!result.ok || !result.data) throw new Error(`HTTP ${result.status}`);
      return show(Object.assign({}, result.data, { status: result.data.status || result.data.rq_status }));
    },
    onTrouble: (text) => { tracker.els.status.textContent = text; },
  };
  tracker.live = followLive(tracker.poll, `/api/jobs/${jobId}/events`, (name, job) => {
    if (gen !== tracker.gen) return false;
    return name === "job" ? show(job) : true;
  });
}

function stopFollowing(tracker) {
  stopPolling(tracker.poll);
  stopLive(tracker.live);
}

// A Cancel or Retry was accepted: show the job the server answered and follow it if it runs.
function jobChanged(tracker, job) {
  tracker.gen += 1;
  stopFollowing(tracker);
  tracker.doc.status = job.status;
  if (ACTIVE_STATUSES.has(job.status)) {
    showJobState(tracker, job);
    follow(tracker);
    announce(`${tracker.doc.filename}: ${job.status === "queued" ? "queued again" : job.status}`);
    const panel = batchPanels.get(tracker.doc.batch_id);
    if (panel) panel.resume();
  } else {
    finishTracking(tracker, job);
  }
}

// Add (or replace) a document in the list; start tracking its job if it is still running.
function addDocument(doc, { prepend = false, jobUrl = null } = {}) {
  const old = trackers.get(doc.id);
  if (old) {
    stopFollowing(old);
    old.els.item.remove();
  }
  const tracker = { doc, els: null, controls: null, poll: null, live: null, gen: 0, stage: null };
  tracker.els = renderDocument(tracker);
  const list = $("documents");
  if (prepend) list.prepend(tracker.els.item); else list.append(tracker.els.item);
  trackers.set(doc.id, tracker);
  if (ACTIVE_STATUSES.has(doc.status) && (jobUrl || doc.job_id)) {
    showJobState(tracker, { status: doc.status, progress: 0, stage: null, error: doc.error, error_code: doc.error_code });
    follow(tracker, jobUrl);
  } else {
    showOutcome(tracker);
  }
  $("documents-message").textContent = "";
  return tracker;
}

async function loadDocuments() {
  const message = $("documents-message");
  message.textContent = "Loading documents…";
  try {
    const result = await getJson("/api/documents?limit=20");
    if (!result.ok) { message.textContent = errorMessage(result); return; }
    trackers.forEach((t) => stopFollowing(t));
    trackers.clear();
    $("documents").replaceChildren();
    const docs = (result.data && result.data.documents) || [];
    docs.forEach((doc) => addDocument(doc));
    message.textContent = docs.length ? "" : "No documents yet. Upload one above.";
  } catch (_) {
    message.textContent = NETWORK_ERROR;
  }
}

// Called when the job reached a terminal status (job given) or vanished (job null):
// fetch the document once and show its outcome.
async function finishTracking(tracker, job) {
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
    tracker.controls.update(null);
    return setStatus(els, "The server does not know this job (it may have expired).", "failed");
  }
  if (job && (!doc.status || ACTIVE_STATUSES.has(doc.status))) {
    // The document record may lag behind the job; trust the job's terminal status.
    doc.status = job.status;
    doc.error = doc.error || job.error;
    doc.error_code = doc.error_code || job.error_code;
  }
  if (ACTIVE_STATUSES.has(doc.status)) { // retried meanwhile (e.g. in another tab): follow it again
    showJobState(tracker, Object.assign({ progress: 0 }, doc));
    return follow(tracker);
  }
  if (!loaded && doc.status === "finished") {
    tracker.controls.update(doc.status);
    return setStatus(els, "Finished (could not load the details; press Refresh).", "finished");
  }
  announce(`${doc.filename}: ${showOutcome(tracker, job).text}`);
}

// ---------- batches (one upload of several files) ----------

function totalsText(totals) {
  const known = STATUS_ORDER.filter((s) => totals[s]);
  const others = Object.keys(totals).filter((s) => !STATUS_ORDER.includes(s) && totals[s]);
  return [...known, ...others].map((s) => `${totals[s]} ${s}`).join(" · ");
}

// A panel for one upload: the batch's overall progress (live, or polled, until finished) and the files
// that were not processed again because the same bytes had been uploaded before.
function addBatch(body, fileCount) {
  const docs = body.documents || [];
  const duplicates = docs.filter((d) => d.duplicate);
  const item = el("li", "batch");
  let poll = null; // the batch's poll while it runs (the fallback of its live stream)
  let live = null; // the batch's live stream (followLive)
  let gen = 0; // bumped by a Retry in the batch: an answer fetched before it may be stale
  const label = `the upload of ${plural(fileCount, "file")}`;
  const dismiss = button("Dismiss", "link-button", () => {
    stopPolling(poll);
    stopLive(live);
    batchPanels.delete(body.batch_id);
    item.remove();
  });
  dismiss.setAttribute("aria-label", `Dismiss ${label}`);
  dismiss.hidden = Boolean(body.batch_url); // shown once the batch is done
  const head = el("div", "doc-head");
  head.append(el("span", "doc-name", `Upload of ${plural(fileCount, "file")}`));
  head.append(el("span", "doc-meta", new Date().toLocaleTimeString()));
  item.append(head);

  if (body.batch_url) {
    const progress = el("progress");
    progress.max = 100;
    progress.value = 0;
    progress.setAttribute("aria-label", `Overall progress of ${label}`);
    const status = el("p", "doc-status", "Queued — waiting for a worker");
    status.dataset.kind = "active";
    item.append(progress, status);
    // Show a batch ({progress, totals, finished}); returns whether it still runs.
    const show = (batch) => {
      const percent = clampProgress(batch.progress);
      const totals = totalsText(batch.totals || {});
      progress.value = percent;
      if (batch.finished) {
        const bad = ["failed", "stopped", "canceled"].some((s) => (batch.totals || {})[s]);
        status.textContent = `Done: ${totals || "no documents"}`;
        status.dataset.kind = bad ? "failed" : "finished";
        announce(`Done with ${label}: ${totals}`);
        dismiss.hidden = false;
        return false;
      }
      status.textContent = `${percent}% · ${totals}`;
      return true;
    };
    poll = {
      interval: BATCH_POLL_INTERVAL_MS,
      step: async () => {
        const started = gen;
        const result = await getJson(body.batch_url);
        if (started !== gen) return true; // poll again
        if (result.status === 404) {
          status.textContent = "The server does not know this upload any more.";
          status.dataset.kind = "failed";
          progress.hidden = true;
          return false;
        }
        if (!result.ok || !result.data) throw new Error(`HTTP ${result.status}`);
        return show(result.data);
      },
      onTrouble: (text) => { status.textContent = text; },
    };
    // Live: the stream's first "batch" event lists the jobs; each "job" event updates one, and
    // the totals and progress (an ended job counts 100 %) are counted here as the server does.
    let jobs = new Map();
    const showJobs = () => {
      const totals = {};
      let done = 0;
      jobs.forEach((job) => {
        totals[job.status] = (totals[job.status] || 0) + 1;
        done += ACTIVE_STATUSES.has(job.status) ? clampProgress(job.progress) : 100;
      });
      const finished = [...jobs.values()].every((job) => !ACTIVE_STATUSES.has(job.status));
      return show({ totals, finished, progress: jobs.size ? Math.floor(done / jobs.size) : 100 });
    };
    const followBatch = () => {
      stopLive(live);
      live = followLive(poll, `/api/batches/${encodeURIComponent(body.batch_id)}/events`, (name, data) => {
        if (name === "batch") {
          jobs = new Map((data.jobs || []).map((job) => [job.id, job]));
          return show(data);
        }
        jobs.set(data.id, data);
        return showJobs();
      });
    };
    if (body.batch_id) followBatch(); else startPolling(poll);
    if (body.batch_id) {
      batchPanels.set(body.batch_id, {
        resume() {
          gen += 1;
          if (!item.isConnected || isPolling(poll) || (live && !live.closed)) return;
          dismiss.hidden = true;
          progress.hidden = false;
          status.dataset.kind = "active";
          followBatch();
        },
      });
    }
  }

  if (duplicates.length) {
    const list = el("ul", "duplicates");
    duplicates.forEach((d) => {
      const entry = el("li", null, `${d.filename}: already uploaded, not processed again. `);
      const link = el("a", null, "Show the existing document");
      link.setAttribute("aria-label", `Show the existing document for ${d.filename}`);
      link.href = `#${docAnchor(d.id)}`;
      link.addEventListener("click", (event) => {
        const row = $(docAnchor(d.id));
        if (!row) return;
        event.preventDefault();
        row.scrollIntoView({ block: "center" });
        row.focus({ preventScroll: true });
      });
      entry.append(link);
      list.append(entry);
    });
    item.append(list);
  }

  item.append(dismiss);
  $("batches").prepend(item);
}

// A duplicate points at an earlier document: show that document (its real state) in the list.
async function showExisting(entry) {
  const tracker = trackers.get(entry.id);
  let doc = tracker ? tracker.doc : null;
  if (!doc) {
    try {
      const result = await getJson(entry.document_url || `/api/documents/${encodeURIComponent(entry.id)}`);
      if (result.ok && result.data) doc = result.data.document || result.data;
    } catch (_) { /* fall back below */ }
  }
  const shown = tracker || addDocument(doc || Object.assign({ status: "queued", warnings: [] }, entry),
    { prepend: true, jobUrl: doc ? null : entry.status_url });
  shown.els.note.textContent = `Uploaded again as ${entry.filename} at ${new Date().toLocaleTimeString()}: already uploaded, not processed again.`;
}

// ---------- upload ----------

async function handleUpload(event) {
  event.preventDefault();
  const fileInput = $("upload-file");
  const password = $("upload-password").value;
  const callbackUrl = $("upload-callback").value.trim();
  const errorBox = $("upload-error");
  const statusBox = $("upload-status");
  const submit = $("upload-button");
  errorBox.textContent = "";
  const files = [...fileInput.files];
  const urls = $("upload-urls").value.split(/\s+/).filter(Boolean);
  if (!files.length && !urls.length) {
    errorBox.textContent = "Choose at least one file to upload, or give a URL to fetch.";
    return fileInput.focus();
  }
  if (files.length && urls.length) {
    errorBox.textContent = "Send files or URLs, one kind at a time: clear one of the two fields.";
    return $("upload-urls").focus();
  }
  const delay = $("upload-delay").value.trim();
  let body;
  const headers = csrfHeaders();
  if (urls.length) { // a fetch request: JSON (the fetch jobs download them)
    const request = { urls };
    if (callbackUrl) request.callback_url = callbackUrl;
    if (delay) request.delay = Number(delay);
    body = JSON.stringify(request);
    headers["Content-Type"] = "application/json";
  } else {
    body = new FormData();
    files.forEach((file) => body.append("file", file, file.name));
    if (password) body.append("password", password);
    if ($("upload-reprocess").checked) body.append("reprocess", "true");
    if (callbackUrl) body.append("callback_url", callbackUrl);
    if (delay) body.append("delay", delay);
    if ($("upload-report").checked) body.append("report", "documents");
  }

  const hadFocus = document.activeElement === submit;
  submit.disabled = true; // (which drops the keyboard focus: given back below)
  statusBox.textContent = urls.length ? `Sending ${plural(urls.length, "URL")}…` : `Uploading ${plural(files.length, "file")}…`;
  try {
    const result = await readResponse(await fetch("/api/documents", { method: "POST", body, headers }));
    if (!result.ok) {
      statusBox.textContent = "";
      errorBox.textContent = errorMessage(result);
      return;
    }
    const data = result.data || {};
    const docs = data.documents || [];
    const fresh = docs.filter((d) => !d.duplicate);
    // Show newest at the top; sizes/types come from the local files (assumes same order as sent).
    docs.forEach((d, i) => {
      if (d.duplicate) return;
      const file = files[i] && files[i].name === d.filename ? files[i] : null;
      const doc = Object.assign({ status: "queued", warnings: [], created_at: new Date().toISOString(),
        batch_id: data.batch_id }, d,
        file ? { bytes: file.size, content_type: file.type } : {});
      addDocument(doc, { prepend: true, jobUrl: d.status_url || null });
    });
    docs.filter((d) => d.duplicate).forEach(showExisting);
    if (docs.length > 1 || fresh.length < docs.length) addBatch(data, docs.length);
    const dupCount = docs.length - fresh.length;
    const later = fresh.some((d) => d.status === "scheduled");
    const refused = (data.refused || []).map((r) => r.error).join(" ");
    if (refused) errorBox.textContent = refused;
    statusBox.textContent = (fresh.length
      ? `${urls.length ? "Fetching" : "Uploaded"} ${plural(fresh.length, urls.length ? "URL" : "file")}; ` +
        `${later ? "scheduled to start later" : "processing in the background"}.` +
        (dupCount ? ` ${plural(dupCount, "file")} had already been uploaded.` : "")
      : `Nothing new to process: ${dupCount === 1 ? "the file was" : "the files were"} already uploaded.`) +
      (data.report ? " A documents report follows once every file is done (Reports page)." : "");
    $("upload-form").reset();
  } catch (_) {
    statusBox.textContent = "";
    errorBox.textContent = NETWORK_ERROR;
  } finally {
    submit.disabled = false;
    if (hadFocus && document.activeElement === document.body) submit.focus();
  }
}

// ---------- search ----------

let searchSeq = 0; // ignore answers to searches that were superseded

function renderResult(hit) {
  const item = el("li", "result");
  const head = el("div", "result-head");
  const name = el("a", "result-name", hit.filename); // the chunk in context, on its document's page
  name.href = documentUrl(hit.document_id, hit.ordinal);
  head.append(name);
  const pages = formatPages(hit.page_start, hit.page_end);
  if (pages) head.append(el("span", "result-pages", pages));
  if (hit.ocr) head.append(el("span", "chunk-ocr", "OCR"));
  const score = typeof hit.score === "number" ? hit.score.toFixed(3) : "–";
  head.append(el("span", "result-score", `score ${score}`));
  const text = hit.text || "";
  const para = el("p", "result-text");
  item.append(head);
  if (hit.headings && hit.headings.length) {
    const path = el("p", "result-headings", hit.headings.join(" › "));
    path.setAttribute("aria-label", `Section: ${hit.headings.join(", ")}`);
    item.append(path);
  }
  item.append(para);
  if (text.length <= SNIPPET_CHARS) {
    para.textContent = text;
    return item;
  }
  // Long chunk: show a snippet, with a button to expand to the full text.
  const snippet = `${text.slice(0, SNIPPET_CHARS).trimEnd()}…`;
  para.textContent = snippet;
  const toggle = button("Show more", "link-button");
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
  loadDocuments();
});
