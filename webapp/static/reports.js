// Docket's reports page: request an activity or documents report, follow it, open and download it.
// Needs common.js (loaded before it). The list shows the newest reports (GET /api/reports).
"use strict";

const REPORT_LIST_LIMIT = 20;
const REPORT_POLL_INTERVAL_MS = 1000;
const DOWNLOAD_LABELS = { csv: "CSV", json: "JSON", pdf: "PDF" };
const TYPE_NAMES = { activity: "Activity report", documents: "Documents report" };

const reportRows = new Map(); // report id -> {id, els, controls, poll, gen, report}
let documentsLoaded = false;

// ---------- the list of the newest reports ----------

async function loadReports() {
  try {
    const result = await getJson(`/api/reports?limit=${REPORT_LIST_LIMIT}`);
    if (!result.ok || !result.data) {
      $("reports-message").textContent = errorMessage(result);
      return;
    }
    result.data.reports.forEach((report) => { if (!reportRows.has(report.id)) addReport(report.id, { report }); });
    showEmptyMessage();
  } catch (_) {
    $("reports-message").textContent = NETWORK_ERROR;
  }
}

// ---------- the form ----------

function selectedType() {
  return document.querySelector('input[name="type"]:checked').value;
}

function selectedScope() {
  return document.querySelector('input[name="scope"]:checked').value;
}

// Show the fields the chosen type (and, for documents, the chosen scope) uses.
function updateForm() {
  const documents = selectedType() === "documents";
  const selecting = documents && selectedScope() === "selected";
  $("report-scope").hidden = !documents;
  $("report-period").hidden = selecting;
  $("report-documents").hidden = !selecting;
  if (selecting && !documentsLoaded) loadDocumentChoices();
}

async function loadDocumentChoices() {
  const message = $("report-documents-message");
  const list = $("report-document-list");
  documentsLoaded = true;
  message.textContent = "Loading documents…";
  try {
    const result = await getJson("/api/documents?limit=100");
    if (!result.ok) {
      documentsLoaded = false;
      message.textContent = errorMessage(result);
      return;
    }
    const docs = (result.data && result.data.documents) || [];
    list.replaceChildren(...docs.map((doc, i) => {
      const item = el("li", "choice");
      const box = el("input");
      box.type = "checkbox";
      box.id = `report-doc-${i}`;
      box.name = "document_ids";
      box.value = doc.id;
      const label = el("label", null, doc.filename || "(unnamed)");
      label.htmlFor = box.id;
      const meta = [doc.status, formatDate(doc.created_at)].filter(Boolean).join(" · ");
      label.append(el("span", "doc-meta", ` ${meta}`));
      item.append(box, label);
      return item;
    }));
    message.textContent = docs.length
      ? `The ${plural(docs.length, "newest document")}; choose one or more.`
      : "No documents yet: upload some on the Documents page, or report on a period.";
  } catch (_) {
    documentsLoaded = false;
    message.textContent = NETWORK_ERROR;
  }
}

// A datetime-local value (the browser's local time) as ISO-8601 UTC; "" stays undefined.
function toUtc(input, label) {
  const value = input.value;
  if (!value) return undefined;
  const date = new Date(value);
  if (isNaN(date)) throw new Error(`“${label}” is not a valid date and time.`);
  return date.toISOString();
}

function buildRequest() {
  const type = selectedType();
  const params = {};
  if (type === "documents" && selectedScope() === "selected") {
    const ids = [...document.querySelectorAll('#report-document-list input[type="checkbox"]:checked')].map((b) => b.value);
    if (!ids.length) throw new Error("Choose at least one document, or report on a period.");
    params.document_ids = ids;
  } else {
    const since = toUtc($("report-since"), "From");
    const until = toUtc($("report-until"), "Until");
    if (since) params.since = since;
    if (until) params.until = until;
  }
  return { type, params };
}

async function handleRequest(event) {
  event.preventDefault();
  const errorBox = $("report-error");
  const statusBox = $("report-status");
  const submit = $("report-button");
  errorBox.textContent = "";
  let request;
  try {
    request = buildRequest();
  } catch (err) {
    errorBox.textContent = err.message;
    return;
  }
  submit.disabled = true;
  statusBox.textContent = "Requesting the report…";
  try {
    const result = await postJson("/api/reports", request);
    if (!result.ok || !result.data || !result.data.id) {
      statusBox.textContent = "";
      errorBox.textContent = errorMessage(result);
      return;
    }
    const { id, job_id: jobId, report_url: url } = result.data;
    $("reports-message").textContent = "";
    addReport(id, { prepend: true, url,
      report: { id, job_id: jobId, type: request.type, params: request.params, status: "queued", progress: 0 } });
    statusBox.textContent = `${TYPE_NAMES[request.type]} requested; it is made in the background.`;
  } catch (_) {
    statusBox.textContent = "";
    errorBox.textContent = NETWORK_ERROR;
  } finally {
    submit.disabled = false;
  }
}

// ---------- the list of reports ----------

function describeParams(report) {
  const params = report.params || {};
  if (Array.isArray(params.document_ids)) return plural(params.document_ids.length, "document");
  if (params.since || params.until) {
    return `${params.since ? formatDate(params.since) : "24 hours before"} – ${params.until ? formatDate(params.until) : "now"}`;
  }
  return "the last 24 hours";
}

function renderReport(row) {
  const item = el("li", "doc report");
  const head = el("div", "doc-head");
  const name = el("span", "doc-name");
  const meta = el("span", "doc-meta");
  head.append(name, meta);
  const progress = el("progress");
  progress.max = 100;
  progress.value = 0;
  const status = el("p", "doc-status", "Loading…");
  status.dataset.kind = "active";
  const detail = el("div", "doc-detail");
  const links = el("p", "report-links");
  links.hidden = true;
  const message = el("p", "row-error");
  message.setAttribute("role", "alert");
  const remove = button("Remove from list", "link-button", () => {
    stopFollowing(row);
    reportRows.delete(row.id);
    item.remove();
    showEmptyMessage();
  });
  remove.hidden = true;
  const controls = createJobControls({
    subject: "this report",
    getJobId: () => row.report && row.report.job_id,
    onChanged: () => { row.gen += 1; follow(row); },
    showError: (text) => { message.textContent = text; },
    onRefused: () => follow(row),
  });
  controls.update(null);
  item.append(head, progress, status, detail, links, controls.node, message, remove);
  row.controls = controls;
  return { item, name, meta, progress, status, detail, links, message, remove };
}

function showReportHeading(row) {
  const { report, els } = row;
  const title = TYPE_NAMES[report.type] || "Report";
  els.name.textContent = report.type ? `${title}: ${describeParams(report)}` : title;
  els.meta.textContent = report.created_at ? `requested ${formatTime(report.created_at)}` : "";
  els.progress.setAttribute("aria-label", `Progress of the ${title.toLowerCase()}`);
}

function showDownloads(row) {
  const { report, els } = row;
  const downloads = report.downloads || {};
  const nodes = [];
  if (downloads.html) {
    const open = el("a", "button-link", "Open");
    open.href = downloads.html;
    open.target = "_blank";
    open.rel = "noopener";
    open.setAttribute("aria-label", "Open the report (HTML, in a new tab)");
    nodes.push(open);
  }
  Object.entries(DOWNLOAD_LABELS).forEach(([fmt, label]) => {
    if (!downloads[fmt]) return;
    const link = el("a", null, `Download ${label}`);
    link.href = downloads[fmt];
    link.setAttribute("download", "");
    nodes.push(link);
  });
  els.links.replaceChildren(...nodes);
  els.links.hidden = !nodes.length;
}

function showReport(row, job = null) {
  const { report, els } = row;
  showReportHeading(row);
  const state = Object.assign({}, report, job ? { retry_at: job.retry_at, run_at: job.run_at, attempts: job.attempts,
    stage: job.stage, error_code: job.error_code } : {});
  els.progress.value = clampProgress(report.progress);
  if (ACTIVE_STATUSES.has(report.status)) {
    els.progress.hidden = false;
    els.status.textContent = describeActiveJob(state);
    els.status.dataset.kind = "active";
  } else {
    els.progress.hidden = true;
    if (report.status === "finished") {
      const ready = report.downloads && report.downloads.html;
      els.status.textContent = ready ? "Ready" : "Finished, but its files are not available.";
      els.status.dataset.kind = ready ? "finished" : "warning";
    } else if (report.status === "failed" || report.status === "stopped" || report.status === "canceled") {
      const word = { failed: "Failed", stopped: "Stopped", canceled: "Canceled" }[report.status];
      els.status.textContent = report.error ? `${word}: ${report.error}` : word;
      els.status.dataset.kind = "failed";
    } else {
      els.status.textContent = report.status ? `Status: ${report.status}` : "Its job is unknown.";
      els.status.dataset.kind = "failed";
    }
  }
  const line = jobDetail(state, { includeError: report.status === "scheduled" });
  els.detail.replaceChildren(...(line ? [line] : []));
  showDownloads(row);
  row.controls.update(report.status);
}

// Follow the report until its job ends: each change its job's event stream announces (see
// followLive in common.js) fetches the report once; without the stream, poll it. A scheduled
// report (waiting for an automatic retry) also asks its job for the retry time, which the report
// does not carry.
function follow(row) {
  stopFollowing(row);
  const gen = row.gen;
  row.poll = {
    interval: REPORT_POLL_INTERVAL_MS,
    step: async () => {
      const result = await getJson(row.url);
      if (gen !== row.gen) return false;
      if (result.status === 404) {
        row.els.progress.hidden = true;
        row.els.status.textContent = "This report no longer exists on the server.";
        row.els.status.dataset.kind = "failed";
        row.controls.update(null);
        row.els.remove.hidden = false;
        return false;
      }
      if (!result.ok || !result.data) throw new Error(`HTTP ${result.status}`);
      const before = row.report && row.report.status;
      row.report = result.data;
      let job = null;
      if (row.report.status === "scheduled" && row.report.status_url) {
        const jobResult = await getJson(row.report.status_url);
        if (jobResult.ok && jobResult.data) job = jobResult.data;
      }
      showReport(row, job);
      const active = ACTIVE_STATUSES.has(row.report.status);
      if (!active && before !== row.report.status) {
        announce(`${TYPE_NAMES[row.report.type] || "Report"}: ${row.els.status.textContent}`);
      }
      return active;
    },
    onTrouble: (text) => { row.els.status.textContent = text; },
  };
  const jobId = row.report && row.report.job_id;
  if (!jobId || !ACTIVE_STATUSES.has(row.report.status)) {
    startPolling(row.poll);
    return;
  }
  row.live = followLive(row.poll, `/api/jobs/${encodeURIComponent(jobId)}/events`, (name, job) => {
    if (gen !== row.gen) return false;
    if (name !== "job") return true;
    row.poll.step().catch(() => row.poll.onTrouble("Could not load the report; it will be shown when it changes."));
    return ACTIVE_STATUSES.has(job.status);
  });
}

function stopFollowing(row) {
  stopPolling(row.poll);
  stopLive(row.live);
}

function addReport(id, { prepend = false, url = null, report = null } = {}) {
  const old = reportRows.get(id);
  if (old) {
    stopFollowing(old);
    old.els.item.remove();
  }
  const row = { id, url: url || `/api/reports/${encodeURIComponent(id)}`, report: report || { id }, poll: null, live: null, gen: 0 };
  row.els = renderReport(row);
  if (report) showReport(row);
  const list = $("reports");
  if (prepend) list.prepend(row.els.item); else list.append(row.els.item);
  reportRows.set(id, row);
  follow(row);
  return row;
}

function showEmptyMessage() {
  $("reports-message").textContent = reportRows.size ? "" : "No reports yet.";
}

// ---------- start ----------

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll('input[name="type"], input[name="scope"]').forEach((input) => {
    input.addEventListener("change", updateForm);
  });
  $("report-form").addEventListener("submit", handleRequest);
  updateForm();
  loadReports();
});
