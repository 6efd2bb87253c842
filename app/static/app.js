// The chat page. Every text that comes from documents or answers is set with textContent:
// documents may hold markup, and it must show as text, never run.
"use strict";

const KEY_STORAGE = "samkv.apiKey";
const CONVERSATION_STORAGE = "samkv.conversation";
const COMPARED_WITH = "full";
// Questions the bundled sample collection answers; each is offered while its document is stored.
const EXAMPLES = [
  { document: "oriel-bank", question: "What is the vault code at the Oriel bank?" },
  { document: "velmora-harbour", question: "Who is the harbour master of Velmora?" },
  { document: "kestrel-railway", question: "When does the night train leave Ambleford?" },
];

const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const key = localStorage.getItem(KEY_STORAGE);
  if (key) headers["Authorization"] = "Bearer " + key;
  return headers;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON: fall back to the status line */ }
  return response.status + " " + response.statusText;
}

function announce(text) {
  $("status").textContent = text;
}

// --- figures ------------------------------------------------------------------------------

function formatBytes(bytes) {
  if (bytes === undefined || bytes === null) return "?";
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return (unit ? value.toFixed(1) : String(value)) + " " + units[unit];
}

function formatStats(stats) {
  const parts = ["method " + stats.method];
  if (stats.context_tokens !== undefined) {
    parts.push("tokens kept " + stats.kept_tokens + " / " + stats.context_tokens);
  }
  if (stats.ttft_ms !== undefined) parts.push("time to first token " + Math.round(stats.ttft_ms) + " ms");
  if (stats.kv_bytes_decode !== undefined) parts.push("KV cache " + formatBytes(stats.kv_bytes_decode));
  if (stats.tokens_per_s) parts.push(stats.tokens_per_s.toFixed(1) + " tokens/s");
  return parts.join(" · ");
}

// The figures a comparison sets side by side, each in its own labelled element.
function renderFigures(container, stats) {
  container.replaceChildren();
  const rows = [
    ["ttft", "Time to first token", Math.round(stats.ttft_ms) + " ms"],
    ["kv", "KV cache at decoding", formatBytes(stats.kv_bytes_decode)],
    ["kept", "Context tokens kept", stats.kept_tokens + " / " + stats.context_tokens],
  ];
  for (const [name, label, value] of rows) {
    container.append(element("dt", null, label), element("dd", "figure-" + name, value));
  }
}

// --- sources and what was kept of them ----------------------------------------------------

// Appends text[from, to) to `parent`, the recomputed parts of it in their own marks.
function appendWithRecomputed(parent, text, from, to, recomputed) {
  let at = from;
  for (const span of recomputed) {
    const start = Math.max(span.start, from);
    const end = Math.min(span.end, to);
    if (start >= end) continue;
    if (start > at) parent.append(text.slice(at, start));
    parent.append(element("mark", "recomputed", text.slice(start, end)));
    at = end;
  }
  if (to > at) parent.append(text.slice(at, to));
}

// The source text with each kept span (API offsets) in a mark, recomputed tokens marked within.
function highlightedText(text, selection) {
  const fragment = document.createDocumentFragment();
  let at = 0;
  for (const span of selection.kept) {
    appendWithRecomputed(fragment, text, at, span.start, selection.recomputed);
    const mark = element("mark", "kept");
    mark.dataset.start = span.start;
    mark.dataset.end = span.end;
    appendWithRecomputed(mark, text, span.start, span.end, selection.recomputed);
    fragment.append(mark);
    at = span.end;
  }
  appendWithRecomputed(fragment, text, at, text.length, selection.recomputed);
  return fragment;
}

function keptBar(selection) {
  const percent = Math.round(selection.kept_share * 100);
  const bar = element("span", "kept-bar");
  bar.setAttribute("role", "img");
  bar.setAttribute("aria-label", "kept " + selection.kept_tokens + " of " + selection.tokens +
    " tokens (" + percent + "%), " + selection.recomputed_tokens + " recomputed");
  const fill = element("span", "kept-fill");
  fill.style.width = percent + "%";
  bar.append(fill);
  return bar;
}

function renderSource(source, index, selection, method) {
  const details = element("details", "source");
  const summary = element("summary", null,
    "[" + (index + 1) + "] " + source.document_id + " #" + source.chunk_id +
    " (score " + Number(source.score).toFixed(2) + ")");
  const text = element("pre", null, source.text);
  details.append(summary);
  if (selection) {
    const share = element("span", "kept-share",
      Math.round(selection.kept_share * 100) + "% kept by " + method);
    summary.append(" ", keptBar(selection), share);
    const toggle = element("button", "show-kept", "Highlight kept tokens");
    toggle.type = "button";
    toggle.setAttribute("aria-pressed", "false");
    const legend = element("p", "legend");
    legend.append(element("mark", "kept", "kept (reused as stored)"), " ",
      element("mark", "recomputed", "recomputed"), " plain: dropped");
    legend.hidden = true;
    toggle.addEventListener("click", () => {
      const on = toggle.getAttribute("aria-pressed") !== "true";
      toggle.setAttribute("aria-pressed", String(on));
      toggle.textContent = on ? "Show plain text" : "Highlight kept tokens";
      legend.hidden = !on;
      text.replaceChildren(on ? highlightedText(source.text, selection) : source.text);
    });
    details.append(toggle, legend);
  }
  details.append(text);
  return details;
}

function renderSources(container, turn) {
  container.replaceChildren();
  const selections = turn.selection || [];
  (turn.sources || []).forEach((source, i) => {
    container.append(renderSource(source, i, selections[i], turn.selectionMethod));
  });
}

// --- conversation -------------------------------------------------------------------------

function loadConversation() {
  try { return JSON.parse(sessionStorage.getItem(CONVERSATION_STORAGE)) || []; }
  catch (_) { return []; }
}

function saveConversation(turns) {
  sessionStorage.setItem(CONVERSATION_STORAGE, JSON.stringify(turns));
}

function renderRun(run, compared) {
  const column = element("div", "run");
  column.dataset.method = run.method;
  const view = {
    column,
    answer: element("div", "answer", run.answer || ""),
    stats: element("div", "stats", run.stats ? formatStats(run.stats) : ""),
    figures: element("dl", "figures"),
    error: element("div", "error", run.error || ""),
  };
  if (compared) column.append(element("h3", "run-method", run.method));
  column.append(view.answer, compared ? view.figures : view.stats, view.error);
  if (compared && run.stats) renderFigures(view.figures, run.stats);
  return view;
}

function renderTurn(turn) {
  const item = element("li", "turn");
  const compared = turn.runs.length > 1;
  if (compared) item.classList.add("comparison");
  const runs = element("div", "runs");
  const views = turn.runs.map((run) => renderRun(run, compared));
  views.forEach((view) => runs.append(view.column));
  const sources = element("div", "sources");
  item.append(element("div", "question", turn.question), runs, sources);
  renderSources(sources, turn);
  $("conversation").append(item);
  return { item, sources, runs: views };
}

function parseSSE(buffer, onEvent) {
  // Events end with a blank line; whatever follows the last one is kept for the next read.
  const blocks = buffer.split(/\r?\n\r?\n/);
  const rest = blocks.pop();
  for (const block of blocks) {
    let event = "message";
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (data.length) onEvent(event, JSON.parse(data.join("\n")));
  }
  return rest;
}

// Streams one answer to `question` by `method` into `run` and its view.
async function streamRun(question, run, view, turn, turnView, withSelection) {
  const body = {
    question,
    method: run.method,
    top_k: Number($("top-k").value) || undefined,
    stream: true,
    include_selection: withSelection,
  };
  const keepRatio = Number($("keep-ratio").value);
  if (keepRatio > 0 && (run.method === "samkv" || run.method === "snapkv")) body.keep_ratio = keepRatio;
  view.answer.classList.add("streaming");
  view.answer.setAttribute("aria-busy", "true");
  try {
    const response = await fetch("/v1/query", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json", "Accept": "text/event-stream" }),
      body: JSON.stringify(body),
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      buffer = parseSSE(buffer, (event, data) => {
        if (event === "sources") {
          turn.sources = data.sources;
          renderSources(turnView.sources, turn);
        } else if (event === "token") {
          run.answer += data.text;
          view.answer.textContent = run.answer;
        } else if (event === "done") {
          run.stats = data.stats;
          view.stats.textContent = formatStats(data.stats);
          renderFigures(view.figures, data.stats);
          if (data.selection) {
            turn.selection = data.selection;
            turn.selectionMethod = run.method;
            renderSources(turnView.sources, turn);
          }
        } else if (event === "error") {
          throw new Error(data.error.message);
        }
      });
    }
  } catch (error) {
    run.error = error.message;
    view.error.textContent = error.message;
  } finally {
    view.answer.classList.remove("streaming");
    view.answer.removeAttribute("aria-busy");
  }
}

// Asks `question` by each of `methods` in turn (one after the other, so each answer's time to
// first token is its own); the sources show what the last method kept.
async function ask(question, methods) {
  const turns = loadConversation();
  const turn = { question, sources: [], selection: null, selectionMethod: null,
    runs: methods.map((method) => ({ method, answer: "", stats: null, error: null })) };
  const view = renderTurn(turn);
  for (let i = 0; i < methods.length; i++) {
    announce("Answering with " + methods[i] + "…");
    await streamRun(question, turn.runs[i], view.runs[i], turn, view, i === methods.length - 1);
  }
  announce("Answered.");
  turns.push(turn);
  saveConversation(turns);
}

function comparedMethods() {
  const chosen = $("method").value;
  return [COMPARED_WITH, chosen === COMPARED_WITH ? "samkv" : chosen];
}

function labelCompare() {
  const [, other] = comparedMethods();
  $("compare").textContent = "Compare " + other + " with " + COMPARED_WITH;
}

async function submitQuestion(methods) {
  if ($("ask").disabled) return;
  const question = $("question").value.trim();
  if (!question) { $("question").focus(); return; }
  $("question").value = "";
  $("ask").disabled = $("compare").disabled = true;
  try { await ask(question, methods); } finally {
    $("ask").disabled = $("compare").disabled = false;
  }
}

// --- documents ----------------------------------------------------------------------------

function jobText(job) {
  const cached = " (" + job.chunks_stored + "/" + job.chunks_total + " chunks cached)";
  if (job.status === "failed") return "failed: " + (job.error || "no reason given");
  if (job.status === "done") return "done" + cached;
  return job.status + " " + Math.round(job.progress * 100) + "%" + cached;
}

function failRow(row, message) {
  row.dataset.status = "failed";
  row.querySelector("progress").remove();
  const label = row.querySelector(".job-status");
  label.classList.add("error");
  label.textContent = "failed: " + message;
}

async function pollJob(jobId, row) {
  const bar = row.querySelector("progress");
  const label = row.querySelector(".job-status");
  for (;;) {
    const response = await fetch("/v1/jobs/" + encodeURIComponent(jobId), { headers: authHeaders() });
    if (!response.ok) { failRow(row, await errorMessage(response)); return; }
    const job = await response.json();
    bar.value = job.progress;
    if (job.status === "failed") { failRow(row, job.error || "no reason given"); return; }
    label.textContent = jobText(job);
    row.dataset.status = job.status;
    if (job.status === "done") { refreshDocuments(); return; }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

// One request, and so one job, per file: each file shows its own progress or its own error.
async function uploadFile(file) {
  const row = element("li", "job");
  const bar = element("progress");
  bar.max = 1;
  bar.setAttribute("aria-label", "progress of " + file.name);
  row.append(element("div", "job-name", file.name), bar, element("span", "job-status", "uploading"));
  row.dataset.status = "uploading";
  $("jobs").prepend(row);
  const form = new FormData();
  form.append("files", file, file.name);
  let response;
  try {
    response = await fetch("/v1/documents", { method: "POST", headers: authHeaders(), body: form });
  } catch (error) {
    failRow(row, error.message);
    return;
  }
  if (!response.ok) { failRow(row, await errorMessage(response)); return; }
  const accepted = await response.json();
  row.dataset.jobId = accepted.job_id;
  await pollJob(accepted.job_id, row);
}

// Rebuilds the example buttons only when the offered set changes: a button replaced between
// the press and the release of a click loses that click.
function showExamples(documentIds) {
  const list = $("examples").querySelector("ul");
  const offered = EXAMPLES.filter((example) => documentIds.has(example.document));
  const shown = Array.from(list.querySelectorAll(".example"), (button) => button.textContent);
  if (shown.join("\n") === offered.map((example) => example.question).join("\n")) return;
  list.replaceChildren();
  for (const example of offered) {
    const button = element("button", "example", example.question);
    button.type = "button";
    button.addEventListener("click", () => {
      $("question").value = example.question;
      submitQuestion([$("method").value]);
    });
    const item = element("li");
    item.append(button);
    list.append(item);
  }
  $("examples").hidden = list.children.length === 0;
}

async function refreshDocuments() {
  const list = $("documents");
  const response = await fetch("/v1/documents", { headers: authHeaders() });
  if (!response.ok) { list.replaceChildren(element("li", "error", await errorMessage(response))); return; }
  const body = await response.json();
  list.replaceChildren();
  for (const doc of body.documents) {
    const item = element("li");
    const name = (doc.metadata && doc.metadata.filename) || doc.id;
    const remove = element("button", null, "Delete");
    remove.type = "button";
    remove.setAttribute("aria-label", "Delete " + name);
    remove.addEventListener("click", async () => {
      const deleted = await fetch("/v1/documents/" + encodeURIComponent(doc.id),
        { method: "DELETE", headers: authHeaders() });
      if (deleted.ok) { item.remove(); announce(name + " deleted."); }
    });
    const chunks = doc.chunk_count + (doc.chunk_count === 1 ? " chunk" : " chunks");
    item.append(element("span", null, name + " (" + chunks + ")"), remove);
    list.append(item);
  }
  showExamples(new Set(body.documents.map((doc) => doc.id)));
}

// --- wiring -------------------------------------------------------------------------------

function init() {
  const keyInput = $("api-key");
  keyInput.value = localStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("change", () => {
    if (keyInput.value === (localStorage.getItem(KEY_STORAGE) || "")) return;
    if (keyInput.value) localStorage.setItem(KEY_STORAGE, keyInput.value);
    else localStorage.removeItem(KEY_STORAGE);
    refreshDocuments();
  });
  loadConversation().filter((turn) => Array.isArray(turn.runs)).forEach(renderTurn);
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submitQuestion([$("method").value]);
  });
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("ask").click();
    }
  });
  $("compare").addEventListener("click", () => submitQuestion(comparedMethods()));
  $("method").addEventListener("change", labelCompare);
  labelCompare();
  $("clear").addEventListener("click", () => {
    saveConversation([]);
    $("conversation").replaceChildren();
  });
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const files = Array.from($("files").files);
    $("files").value = "";
    for (const file of files) uploadFile(file);
  });
  $("refresh-documents").addEventListener("click", refreshDocuments);
  refreshDocuments();
}

init();
