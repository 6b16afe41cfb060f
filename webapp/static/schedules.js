// Docket's schedules page: list the periodic jobs (GET /api/schedules) with their next and last run,
// pause / resume / delete them, and add one. Needs common.js (loaded before it).
"use strict";

const SCHEDULES_POLL_INTERVAL_MS = 5000; // next/last runs change by the minute; a light refresh is enough
const STATUS_WORDS = { queued: "Queued", started: "Running", deferred: "Deferred", scheduled: "Waiting to retry",
  finished: "Finished", failed: "Failed", stopped: "Stopped", canceled: "Canceled" };

const rowErrors = new Map(); // schedule id -> the last refusal's sentence, kept across refreshes
let busy = 0; // actions in flight: the list is not redrawn under the user's click
let listPoll = null;

async function deleteJson(url) {
  return readResponse(await fetch(url, { method: "DELETE", headers: csrfHeaders({ Accept: "application/json" }) }));
}

// "every 90 s", "every 5 min", "every 2 h", "every day"
function formatInterval(seconds) {
  const units = [[86400, "day"], [3600, "h"], [60, "min"]];
  for (const [size, unit] of units) {
    if (seconds % size === 0) {
      const n = seconds / size;
      if (unit === "day") return n === 1 ? "every day" : `every ${plural(n, "day")}`;
      return `every ${n.toLocaleString()} ${unit}`;
    }
  }
  return `every ${Number(seconds).toLocaleString()} s`;
}

function describeTimetable(schedule) {
  const when = schedule.cron ? `cron ${schedule.cron} (UTC)` : formatInterval(schedule.interval);
  const params = Object.entries(schedule.params || {}).map(([k, v]) => `${k} = ${JSON.stringify(v)}`);
  return params.length ? `${when} · ${params.join(", ")}` : when;
}

// ---------- the list ----------

function lastRunLine(schedule) {
  const line = el("p", "doc-status");
  const job = schedule.last_job;
  if (!schedule.last_run_at) {
    line.textContent = "Not run yet.";
    line.dataset.kind = "active";
    return line;
  }
  line.append(document.createTextNode(`Last run ${formatTime(schedule.last_run_at)}: `));
  if (!job) {
    line.append(document.createTextNode("its job is no longer kept."));
    line.dataset.kind = "active";
    return line;
  }
  const word = STATUS_WORDS[job.status] || job.status;
  line.append(document.createTextNode(job.error ? `${word} — ${job.error} ` : `${word} `));
  const link = el("a", null, "(job JSON)");
  link.href = job.url;
  link.setAttribute("aria-label", `The job of the last run of ${schedule.job}, as JSON`);
  line.append(link);
  line.dataset.kind = job.status === "finished" ? "finished"
    : ["failed", "stopped", "canceled"].includes(job.status) ? "failed" : "active";
  return line;
}

function nextRunText(schedule) {
  if (schedule.paused) return "Paused — no runs until resumed.";
  if (schedule.next_run_at) return `Next run ${formatTime(schedule.next_run_at)}`;
  return "Next run unknown: the scheduler has not written it yet (or Redis is unreachable).";
}

function renderSchedule(schedule) {
  const item = el("li", "doc schedule");
  const head = el("div", "doc-head");
  head.append(el("span", "doc-name", schedule.job),
    el("span", "doc-meta", schedule.builtin ? "built-in" : `added ${formatTime(schedule.created_at)}`));
  const detail = el("p", "job-detail", describeTimetable(schedule));
  const description = el("p", "doc-note", schedule.description || "");
  const next = el("p", "doc-status", nextRunText(schedule));
  next.dataset.kind = schedule.paused ? "warning" : "active";
  const message = el("p", "row-error", rowErrors.get(schedule.id) || "");
  message.setAttribute("role", "alert");

  const actions = el("div", "job-actions");
  const toggle = button(schedule.paused ? "Resume" : "Pause", "secondary small");
  toggle.setAttribute("aria-label", `${schedule.paused ? "Resume" : "Pause"} the ${schedule.job} schedule`);
  toggle.addEventListener("click", () => act(schedule, schedule.paused ? "resume" : "pause", toggle, message));
  actions.append(toggle);
  if (!schedule.builtin) {
    const remove = button("Delete", "secondary small");
    remove.setAttribute("aria-label", `Delete the ${schedule.job} schedule`);
    remove.addEventListener("click", () => {
      if (window.confirm(`Delete the ${schedule.job} schedule (${describeTimetable(schedule)})?`)) {
        act(schedule, "delete", remove, message);
      }
    });
    actions.append(remove);
  }
  item.append(head, description, detail, next, lastRunLine(schedule), actions, message);
  return item;
}

function showSchedules(schedules) {
  $("schedules").replaceChildren(...schedules.map(renderSchedule));
  $("schedules-message").textContent = schedules.length ? ""
    : "No schedules yet: run “flask --app wsgi schedule sync” to write the built-in ones.";
}

async function refresh() {
  const result = await getJson("/api/schedules");
  if (!result.ok || !result.data) throw new Error(`HTTP ${result.status}`);
  if (!busy) showSchedules(result.data.schedules);
  return true; // keep refreshing
}

function refreshSoon() {
  stopPolling(listPoll);
  listPoll = startPolling({
    interval: SCHEDULES_POLL_INTERVAL_MS,
    step: refresh,
    onTrouble: (text) => { $("schedules-message").textContent = text; },
  });
}

// Pause, resume or delete one schedule; the server's refusal is shown under it.
async function act(schedule, action, control, message) {
  const url = `/api/schedules/${encodeURIComponent(schedule.id)}`;
  rowErrors.delete(schedule.id);
  message.textContent = "";
  control.disabled = true;
  busy += 1;
  try {
    const result = action === "delete" ? await deleteJson(url) : await postJson(`${url}/${action}`);
    if (result.ok) {
      const done = { pause: "paused", resume: "resumed", delete: "deleted" }[action];
      announce(`The ${schedule.job} schedule was ${done}.`);
    } else {
      rowErrors.set(schedule.id, errorMessage(result));
      message.textContent = rowErrors.get(schedule.id);
    }
  } catch (_) {
    rowErrors.set(schedule.id, NETWORK_ERROR);
    message.textContent = NETWORK_ERROR;
  } finally {
    busy -= 1;
    control.disabled = false;
    refreshSoon();
  }
}

// ---------- the form ----------

function selectedWhen() {
  return document.querySelector('input[name="when"]:checked').value;
}

function updateForm() {
  const option = $("schedule-job").selectedOptions[0];
  $("schedule-job-hint").textContent = option ? option.dataset.description : "";
  const params = option && option.dataset.params;
  $("schedule-params-hint").textContent = params ? `Accepted: ${params}.` : "This job takes no parameters.";
  const cron = selectedWhen() === "cron";
  $("schedule-cron-field").hidden = !cron;
  $("schedule-interval-field").hidden = cron;
}

function buildRequest() {
  const body = { job: $("schedule-job").value };
  if (selectedWhen() === "cron") {
    body.cron = $("schedule-cron").value.trim();
    if (!body.cron) throw new Error("Give a cron expression, e.g. 0 6 * * *.");
  } else {
    const raw = $("schedule-interval").value.trim();
    const seconds = Number(raw);
    if (!raw || !Number.isInteger(seconds)) throw new Error("The interval must be a whole number of seconds.");
    body.interval = seconds;
  }
  const params = $("schedule-params").value.trim();
  if (params) {
    try {
      body.params = JSON.parse(params);
    } catch (_) {
      throw new Error('The parameters are not valid JSON; write an object such as {"hours": 24}.');
    }
  }
  return body;
}

async function handleAdd(event) {
  event.preventDefault();
  const errorBox = $("schedule-error");
  const statusBox = $("schedule-status");
  const submit = $("schedule-button");
  errorBox.textContent = "";
  statusBox.textContent = "";
  let body;
  try {
    body = buildRequest();
  } catch (err) {
    errorBox.textContent = err.message;
    return;
  }
  submit.disabled = true;
  statusBox.textContent = "Adding the schedule…";
  try {
    const result = await postJson("/api/schedules", body);
    if (!result.ok || !result.data) {
      statusBox.textContent = "";
      errorBox.textContent = errorMessage(result);
      return;
    }
    const added = result.data;
    statusBox.textContent = added.next_run_at
      ? `Added: ${added.job}, first run ${formatTime(added.next_run_at)}.`
      : `Added: ${added.job}.`;
    refreshSoon();
  } catch (_) {
    statusBox.textContent = "";
    errorBox.textContent = NETWORK_ERROR;
  } finally {
    submit.disabled = false;
  }
}

// ---------- start ----------

document.addEventListener("DOMContentLoaded", () => {
  $("schedule-job").addEventListener("change", updateForm);
  document.querySelectorAll('input[name="when"]').forEach((input) => input.addEventListener("change", updateForm));
  $("schedule-form").addEventListener("submit", handleAdd);
  updateForm();
  $("schedules-message").textContent = "Loading schedules…";
  refreshSoon();
});
