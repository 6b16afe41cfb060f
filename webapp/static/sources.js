// Docket's sources page: list the sources (GET /api/sources) with their last syncs' counts, sync
// one now, delete one (optionally with its documents), and add one. Needs common.js (loaded before it).
"use strict";

const SOURCES_POLL_INTERVAL_MS = 3000; // a running sync's counts move by the second
const COUNT_LABELS = [["listed", "listed"], ["ingested", "new"], ["changed", "changed"], ["deleted", "deleted"],
  ["unchanged", "unchanged"], ["failed", "failed"]];
let sourcesBusy = 0;

function describeCounts(counts) {
  return COUNT_LABELS.map(([key, label]) => `${(counts && counts[key]) || 0} ${label}`).join(" · ");
}

async function sourceRow(source) {
  const item = el("li", "doc source");
  const head = el("div", "doc-head");
  head.append(el("span", "doc-name", source.name), el("span", "doc-meta", `${source.kind} · added ${formatTime(source.created_at)}`));
  item.append(head);
  if (source.schedule) item.append(el("p", "job-detail", `Synced on cron ${source.schedule.cron} (UTC)`));
  const detail = await getJson(source.source_url);
  const history = el("ul", "source-syncs");
  const syncs = (detail.ok && detail.data.syncs) || [];
  if (!syncs.length) history.append(el("li", "doc-note", "Not synced yet."));
  for (const sync of syncs.slice(0, 5)) {
    const when = sync.ended_at || sync.started_at;
    const line = el("li", "doc-status", `${sync.status || "forgotten"}${when ? " " + formatTime(when) : ""}: ${describeCounts(sync.counts)}${sync.error ? " — " + sync.error : ""}`);
    line.dataset.kind = sync.status === "finished" ? "finished" : RETRYABLE_STATUSES.has(sync.status) ? "failed" : "active";
    history.append(line);
  }
  if (detail.ok && detail.data.items) {
    const items = detail.data.items;
    item.append(el("p", "doc-note", `${items.total} items: ${items.synced} synced, ${items.pending} pending, ${items.failed} failed`));
  }
  item.append(history);
  const message = el("p", "row-error", "");
  const actions = el("div", "job-actions");
  const running = source.sync_job && ACTIVE_STATUSES.has(source.sync_job.status);
  const sync = button(running ? "Syncing…" : "Sync now", "secondary", async () => {
    sourcesBusy += 1;
    sync.disabled = true;
    try {
      const result = await postJson(source.sync_url);
      message.textContent = result.ok ? "" : errorMessage(result);
      announce(result.ok ? `Sync of ${source.name} started.` : errorMessage(result));
    } catch (_) {
      message.textContent = NETWORK_ERROR;
    } finally {
      sourcesBusy -= 1;
      refreshSources();
    }
  });
  sync.disabled = Boolean(running);
  const remove = button("Delete", "secondary", () => removeSource(source, false, message));
  const removeAll = button("Delete with its documents", "secondary", () => removeSource(source, true, message));
  actions.append(sync, remove, removeAll);
  item.append(actions, message);
  return item;
}

async function removeSource(source, withDocuments, message) {
  const what = withDocuments ? `${source.name} and every document made from it` : source.name;
  if (!window.confirm(`Delete ${what}?`)) return;
  sourcesBusy += 1;
  try {
    const url = withDocuments ? `${source.source_url}?delete_documents=true` : source.source_url;
    const result = await readResponse(await fetch(url, { method: "DELETE", headers: csrfHeaders({ Accept: "application/json" }) }));
    message.textContent = result.ok ? "" : errorMessage(result);
  } catch (_) {
    message.textContent = NETWORK_ERROR;
  } finally {
    sourcesBusy -= 1;
    refreshSources();
  }
}

async function refreshSources() {
  if (sourcesBusy) return true;
  const result = await getJson("/api/sources");
  if (!result.ok) {
    $("sources-message").textContent = errorMessage(result);
    return true;
  }
  const rows = await Promise.all(result.data.sources.map(sourceRow));
  const list = $("sources");
  list.replaceChildren(...rows);
  $("sources-message").textContent = rows.length ? "" : "No sources yet: add one below.";
  return true;
}

function sourceBody() {
  const kind = $("source-kind").value;
  const raw = $("source-url").value.trim();
  const body = { kind };
  if (kind === "web") body.urls = raw.split(/\s+/).filter(Boolean);
  else body.url = raw;
  const name = $("source-name").value.trim();
  if (name) body.name = name;
  const cron = $("source-cron").value.trim();
  if (cron) body.cron = cron;
  return body;
}

document.addEventListener("DOMContentLoaded", () => {
  const form = $("source-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const submit = $("source-button");
    submit.disabled = true;
    $("source-error").textContent = "";
    try {
      const result = await postJson("/api/sources", sourceBody());
      if (result.ok) {
        $("source-status").textContent = `Added ${result.data.name}.`;
        form.reset();
        refreshSources();
      } else {
        $("source-error").textContent = errorMessage(result);
      }
    } catch (_) {
      $("source-error").textContent = NETWORK_ERROR;
    } finally {
      submit.disabled = false;
    }
  });
  startPolling({ step: refreshSources, interval: SOURCES_POLL_INTERVAL_MS });
});
