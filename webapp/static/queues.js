// Docket's queues page (admins): each queue's counts, oldest wait, workers and jobs per minute from
// GET /api/queues, refreshed every few seconds. Needs common.js (loaded before it).
"use strict";

const QUEUES_POLL_INTERVAL_MS = 3000;
const COUNT_LABELS = [["queued", "Queued"], ["started", "Running"], ["scheduled", "Waiting to retry"],
  ["deferred", "Deferred"], ["failed", "Failed"], ["finished", "Finished"], ["canceled", "Canceled"]];

// "45 s", "12 min", "3 h 5 min"; "—" for an empty queue.
function formatAge(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

function formatRate(perMinute) {
  return `${Number(perMinute).toLocaleString(undefined, { maximumFractionDigits: 2 })} / min`;
}

function row(label, value) {
  const tr = el("tr");
  const th = el("th", null, label);
  th.scope = "row";
  tr.append(th, el("td", "number", value));
  return tr;
}

function renderQueue(queue) {
  const table = el("table", "queue-table");
  table.id = `queue-${queue.name}`;
  const caption = el("caption", null, `Queue ${queue.name}`);
  const body = el("tbody");
  COUNT_LABELS.forEach(([key, label]) => body.append(row(label, Number(queue.counts[key]).toLocaleString())));
  body.append(
    row("Oldest queued job waiting", formatAge(queue.oldest_queued_age_seconds)),
    row("Workers listening", Number(queue.workers).toLocaleString()),
    row("Jobs ended, last 5 minutes", formatRate(queue.jobs_per_minute.last_5_minutes)),
    row("Jobs ended, last 60 minutes", formatRate(queue.jobs_per_minute.last_60_minutes)),
    row("Delayed (start later)", Number(queue.waiting.delayed).toLocaleString()),
    row("Reports waiting for their batch", Number(queue.waiting.for_batch).toLocaleString()),
  );
  table.append(caption, body);
  const section = el("section", "queue");
  section.append(table);
  if (queue.owners && queue.owners.length) section.append(renderOwners(queue));
  return section;
}

// Each owner's waiting and running jobs in this queue (fair share: workers take them in turn).
function renderOwners(queue) {
  const table = el("table", "queue-table owner-table");
  table.id = `queue-${queue.name}-owners`;
  const head = el("thead");
  const headRow = el("tr");
  ["Owner", "Queued", "Running"].forEach((label) => {
    const th = el("th", null, label);
    th.scope = "col";
    headRow.append(th);
  });
  head.append(headRow);
  const body = el("tbody");
  queue.owners.forEach((entry) => {
    const tr = el("tr");
    const th = el("th", null, entry.owner === null ? "(system)" : entry.owner);
    th.scope = "row";
    tr.append(th, el("td", "number", Number(entry.queued).toLocaleString()),
      el("td", "number", Number(entry.started).toLocaleString()));
    body.append(tr);
  });
  table.append(el("caption", null, `Queue ${queue.name}: by owner`), head, body);
  return table;
}

async function refresh() {
  const result = await getJson("/api/queues");
  if (!result.ok || !result.data) {
    $("queues-message").textContent = errorMessage(result);
    return true; // keep trying: Redis may come back
  }
  $("queues").replaceChildren(...result.data.queues.map(renderQueue));
  $("queues-message").textContent = `Updated ${formatTime(result.data.generated_at)}.`;
  return true;
}

document.addEventListener("DOMContentLoaded", () => {
  $("queues-message").textContent = "Loading the queues…";
  startPolling({
    interval: QUEUES_POLL_INTERVAL_MS,
    step: refresh,
    onTrouble: (text) => { $("queues-message").textContent = text; },
  });
});
