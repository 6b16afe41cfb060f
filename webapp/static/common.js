// Docket browser UI, shared by every page: small helpers, talking to the JSON API, one rate-limited
// poller, job status sentences and the Cancel / Retry job controls. No frameworks, no build step.
// All server-provided text is inserted with textContent, never innerHTML.
"use strict";

const ACTIVE_STATUSES = new Set(["queued", "started", "deferred", "scheduled"]);
const CANCELABLE_STATUSES = ACTIVE_STATUSES; // waiting jobs are canceled, a running one is stopped
const RETRYABLE_STATUSES = new Set(["failed", "stopped", "canceled"]);
const STAGE_LABELS = { extract: "Extracting text", chunk: "Chunking", embed: "Embedding", store: "Storing",
  gather: "Gathering data", summarise: "Summarising", render: "Rendering",
  parts: "Reading pages in parts", join: "Joining the parts" };
const POLL_INTERVAL_MS = 1000; // each running job is checked about once a second...
const MAX_POLLS_PER_SECOND = 6; // ...but never more than this many requests per second in total
const TICK_MS = 250;
const MAX_BACKOFF_MS = 30000;
const NETWORK_ERROR = "Could not reach the server. Check your connection and try again.";

const $ = (id) => document.getElementById(id);

// ---------- small helpers ----------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function button(text, className, onClick) {
  const node = el("button", className, text);
  node.type = "button";
  if (onClick) node.addEventListener("click", onClick);
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

// A time of day for today's times, a full date and time otherwise.
function formatTime(iso) {
  const date = new Date(iso);
  if (!iso || isNaN(date)) return iso || "";
  return date.toDateString() === new Date().toDateString() ? date.toLocaleTimeString() : date.toLocaleString();
}

function clampProgress(value) {
  return Math.max(0, Math.min(100, Math.round(Number(value) || 0)));
}

function announce(text) {
  const announcer = $("announcer");
  if (announcer) announcer.textContent = text;
}

// ---------- the JSON API ----------

// Parse a fetch Response; returns {ok, status, data}. Non-JSON bodies give data = null.
async function readResponse(response) {
  if (response.status === 401 && !window.location.pathname.startsWith("/signin")) {
    // signed out meanwhile (token revoked, session expired): sign in again, then come back
    window.location.assign(`/signin?next=${encodeURIComponent(window.location.pathname)}`);
  }
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
    const form = $("upload-form");
    const limit = form && form.dataset.maxUploadMb ? ` The limit is ${form.dataset.maxUploadMb} MB per upload.` : "";
    return `The upload is too large (HTTP 413).${limit}`;
  }
  return `The server answered with an unexpected error (HTTP ${result.status}). Please try again.`;
}

// Live state is never read from the browser's cache (the API sends no Cache-Control, and a
// back/forward navigation would otherwise be shown the answers of the first visit).
async function getJson(url) {
  return readResponse(await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" }));
}

// Headers of a state-changing request: the page's CSRF token (signed-in sessions must send it).
function csrfHeaders(headers = {}) {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? { ...headers, "X-CSRFToken": meta.content } : headers;
}

// POST with an optional JSON body.
async function postJson(url, body) {
  const options = { method: "POST", headers: csrfHeaders({ Accept: "application/json" }) };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  return readResponse(await fetch(url, options));
}

// ---------- polling ----------

// One shared timer runs the polls that are due, longest-waiting first. A sliding one-second
// window caps the total request rate, so with many running jobs each is simply polled less often.
// A poll is {step, interval?, onTrouble?}: step() fetches and shows; it returns true to keep
// polling and false when done; a thrown error backs off exponentially (2 s, 4 s, … 30 s).
const polls = new Set();
const recentPolls = []; // start times of poll requests in the last second

function startPolling(poll, delayMs = 0) {
  poll.nextPollAt = Date.now() + delayMs;
  poll.failures = 0;
  poll.inFlight = poll.inFlight || false;
  polls.add(poll);
  return poll;
}

function stopPolling(poll) {
  if (poll) polls.delete(poll);
}

function isPolling(poll) {
  return polls.has(poll);
}

async function runPoll(poll) {
  poll.inFlight = true;
  const startedAt = Date.now();
  try {
    const keepGoing = await poll.step();
    poll.failures = 0;
    poll.nextPollAt = startedAt + (poll.interval || POLL_INTERVAL_MS);
    if (!keepGoing) polls.delete(poll);
  } catch (_) {
    poll.failures += 1;
    const delay = Math.min(MAX_BACKOFF_MS, POLL_INTERVAL_MS * 2 ** poll.failures);
    poll.nextPollAt = Date.now() + delay;
    if (poll.onTrouble) poll.onTrouble(`Could not check progress; retrying in ${Math.round(delay / 1000)} s…`);
  } finally {
    poll.inFlight = false;
  }
}

function pollTick() {
  if (document.hidden) return; // don't poll in a background tab
  const now = Date.now();
  while (recentPolls.length && recentPolls[0] <= now - 1000) recentPolls.shift();
  const budget = MAX_POLLS_PER_SECOND - recentPolls.length;
  if (budget <= 0) return;
  const due = [...polls]
    .filter((p) => !p.inFlight && p.nextPollAt <= now)
    .sort((a, b) => a.nextPollAt - b.nextPollAt)
    .slice(0, budget);
  due.forEach((poll) => { recentPolls.push(now); runPoll(poll); });
}

document.addEventListener("DOMContentLoaded", () => {
  document.addEventListener("visibilitychange", () => { if (!document.hidden) pollTick(); });
  setInterval(pollTick, TICK_MS);
});

// ---------- live progress (Server-Sent Events) ----------

// followLive(poll, url, onEvent) shows a job's or a batch's changes as the server streams them
// (GET /api/jobs/<id>/events, /api/batches/<id>/events: an EventSource, signed in by the session
// cookie, same origin) instead of polling. onEvent(name, data) gets the "job" and "batch" events
// in order and returns true to keep listening, false when done. The poll is the fallback: it
// starts when the browser has no EventSource, when LIVE_MAX_STREAMS streams are open already
// (a browser opens at most 6 HTTP/1.1 connections per site: the page's fetches need some), or
// when the stream fails LIVE_MAX_ERRORS times in a row (refused, a proxy that buffers it).
// A stream the server ends after its maximum lifetime is reopened by the EventSource itself and
// starts again with the current state. Returns the follower; stopLive(follower) ends it.
const LIVE_MAX_STREAMS = 4;
const LIVE_MAX_ERRORS = 3;
const liveFollowers = new Set();

function followLive(poll, url, onEvent) {
  const live = { poll, source: null, errors: 0, closed: false };
  if (typeof window.EventSource !== "function" || liveFollowers.size >= LIVE_MAX_STREAMS) {
    live.closed = true; // not live: polled
    startPolling(poll);
    return live;
  }
  const source = new EventSource(url);
  live.source = source;
  liveFollowers.add(live);
  const fallBack = () => {
    if (live.closed) return;
    stopLive(live);
    startPolling(poll);
  };
  const handle = (message) => {
    if (live.closed) return;
    live.errors = 0;
    let data;
    try { data = JSON.parse(message.data); } catch (_) { return; }
    let keepGoing;
    try { keepGoing = onEvent(message.type, data); } catch (_) { return fallBack(); }
    if (keepGoing === false) stopLive(live);
  };
  source.addEventListener("job", handle);
  source.addEventListener("batch", handle);
  // The server ends the stream after the terminal event; if onEvent did not stop (it missed
  // it), one poll shows the final state.
  source.addEventListener("end", () => { if (!live.closed) fallBack(); });
  source.addEventListener("open", () => { live.errors = 0; });
  source.addEventListener("error", () => {
    if (live.closed) return;
    live.errors += 1;
    // CLOSED: the server refused the stream (401, 404, 503): the poll shows why.
    if (source.readyState === EventSource.CLOSED || live.errors >= LIVE_MAX_ERRORS) fallBack();
    else if (poll.onTrouble && live.errors > 1) poll.onTrouble("Live progress interrupted; reconnecting…");
  });
  return live;
}

function stopLive(live) {
  if (!live) return;
  live.closed = true;
  liveFollowers.delete(live);
  if (live.source) live.source.close();
  stopPolling(live.poll);
}

// ---------- jobs ----------

// The sentence for a job that has not ended (queued, deferred, scheduled, started).
function describeActiveJob(job) {
  const progress = clampProgress(job.progress);
  const attempt = job.attempts > 1 ? ` (attempt ${job.attempts})` : "";
  // A big PDF read by page-range parts counts its pages (pages_done of pages_total).
  const pages = job.pages_total ? ` — ${job.pages_done || 0} of ${job.pages_total} pages` : "";
  if (job.status === "started") return `${STAGE_LABELS[job.stage] || "Working"}… ${progress}%${pages}${attempt}`;
  if (job.status === "deferred") return job.batch_id ? "Waiting for the batch's documents to end" : "Waiting for another job (deferred)";
  if (job.status === "scheduled" && job.run_at && !job.retry_at) return `Scheduled for ${formatTime(job.run_at)}`;
  if (job.status === "scheduled" && job.error_code === "rate_limited" && job.retry_at) {
    return `Waiting for the rate limit — runs again at ${formatTime(job.retry_at)}`;
  }
  if (job.status === "scheduled") {
    const when = job.retry_at ? `Retrying at ${formatTime(job.retry_at)}` : "Waiting to retry";
    const failed = job.attempts ? ` — attempt ${job.attempts} failed` : "";
    return `${when}${failed}`;
  }
  return job.attempts ? "Queued again — waiting for a worker" : "Queued — waiting for a worker";
}

// The detail line under a job's status: the error (when the headline does not carry it), the
// machine error code and the number of attempts. Returns a node, or null when there is nothing.
function jobDetail(job, { includeError = false } = {}) {
  const parts = [];
  if (includeError && job.error) parts.push(document.createTextNode(`Last error: ${job.error}`));
  if (job.error_code && job.error_code !== job.status) { // "canceled"/"stopped" would repeat the headline
    const code = el("span", null, "Error code: ");
    code.append(el("code", null, job.error_code));
    parts.push(code);
  }
  if (job.attempts > 1 && !ACTIVE_STATUSES.has(job.status)) parts.push(document.createTextNode(`${job.attempts} attempts`));
  if (!parts.length) return null;
  const line = el("p", "job-detail");
  parts.forEach((part, i) => {
    if (i) line.append(document.createTextNode(" · "));
    line.append(part);
  });
  return line;
}

// Cancel and Retry buttons for one job. `subject` names what the job works on (for the buttons'
// accessible names); getJobId() gives the current job id; onChanged(job) is called with the job
// the server answered after a successful cancel or retry; showError(sentence) shows a refusal
// (404/409/503) as the server's sentence; onRefused() lets the owner refresh its state.
function createJobControls({ subject, getJobId, onChanged, showError, onRefused }) {
  const box = el("div", "job-actions");
  const cancel = button("Cancel", "secondary small");
  const retry = button("Retry", "secondary small");
  cancel.setAttribute("aria-label", `Cancel ${subject}`);
  retry.setAttribute("aria-label", `Retry ${subject}`);
  box.append(cancel, retry);
  // Disabling or hiding the pressed button drops the keyboard focus to the page: for a while after
  // a press, keep it on whichever of the two buttons is shown.
  let keepFocusUntil = 0;
  function keepFocus() {
    const active = document.activeElement;
    if (Date.now() > keepFocusUntil || !(active === document.body || active === cancel || active === retry)) return;
    const shown = [cancel, retry].find((b) => !b.hidden && !b.disabled);
    if (shown && (active === document.body || active.hidden)) shown.focus();
  }

  async function act(action, which) {
    const jobId = getJobId();
    if (!jobId) return;
    if (document.activeElement === which) keepFocusUntil = Date.now() + 10000;
    showError("");
    cancel.disabled = retry.disabled = true;
    const label = which.textContent;
    which.textContent = action === "cancel" ? "Canceling…" : "Retrying…";
    try {
      const result = await postJson(`/api/jobs/${encodeURIComponent(jobId)}/${action}`);
      if (result.ok && result.data) {
        onChanged(Object.assign({}, result.data));
      } else {
        showError(errorMessage(result));
        if (onRefused) onRefused(result);
      }
    } catch (_) {
      showError(NETWORK_ERROR);
    } finally {
      which.textContent = label;
      cancel.disabled = retry.disabled = false;
      keepFocus();
    }
  }

  cancel.addEventListener("click", () => act("cancel", cancel));
  retry.addEventListener("click", () => act("retry", retry));

  return {
    node: box,
    // Show the buttons that fit the job's status (none for finished or unknown).
    update(status) {
      cancel.hidden = !CANCELABLE_STATUSES.has(status);
      retry.hidden = !RETRYABLE_STATUSES.has(status);
      box.hidden = cancel.hidden && retry.hidden;
      keepFocus();
    },
  };
}
