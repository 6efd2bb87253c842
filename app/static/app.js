// The chat page. Every text that comes from documents or answers is set with textContent:
// documents may hold markup, and it must show as text, never run.
"use strict";

const KEY_STORAGE = "samkv.apiKey";
const CONVERSATION_STORAGE = "samkv.conversation";

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

// --- conversation -------------------------------------------------------------------------

function loadConversation() {
  try { return JSON.parse(sessionStorage.getItem(CONVERSATION_STORAGE)) || []; }
  catch (_) { return []; }
}

function saveConversation(turns) {
  sessionStorage.setItem(CONVERSATION_STORAGE, JSON.stringify(turns));
}

function formatStats(stats) {
  const parts = ["method " + stats.method];
  if (stats.context_tokens !== undefined) {
    parts.push("tokens kept " + stats.kept_tokens + " / " + stats.context_tokens);
  }
  if (stats.ttft_ms !== undefined) parts.push("time to first token " + Math.round(stats.ttft_ms) + " ms");
  if (stats.tokens_per_s) parts.push(stats.tokens_per_s.toFixed(1) + " tokens/s");
  return parts.join(" · ");
}

function renderSources(container, sources) {
  container.replaceChildren();
  sources.forEach((source, i) => {
    const details = element("details", "source");
    const summary = element("summary", null,
      "[" + (i + 1) + "] " + source.document_id + " #" + source.chunk_id +
      " (score " + Number(source.score).toFixed(2) + ")");
    details.append(summary, element("pre", null, source.text));
    container.append(details);
  });
}

function renderTurn(turn) {
  const item = element("li", "turn");
  const answer = element("div", "answer", turn.answer || "");
  const sources = element("div", "sources");
  const stats = element("div", "stats", turn.stats ? formatStats(turn.stats) : "");
  const error = element("div", "error", turn.error || "");
  item.append(element("div", "question", turn.question), answer, sources, stats, error);
  renderSources(sources, turn.sources || []);
  $("conversation").append(item);
  return { item, answer, sources, stats, error };
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

async function ask(question) {
  const turns = loadConversation();
  const turn = { question, answer: "", sources: [], stats: null, error: null };
  const view = renderTurn(turn);
  view.answer.classList.add("streaming");
  const body = {
    question,
    method: $("method").value,
    top_k: Number($("top-k").value) || undefined,
    stream: true,
  };
  const keepRatio = Number($("keep-ratio").value);
  if (keepRatio > 0 && (body.method === "samkv" || body.method === "snapkv")) body.keep_ratio = keepRatio;
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
          renderSources(view.sources, turn.sources);
        } else if (event === "token") {
          turn.answer += data.text;
          view.answer.textContent = turn.answer;
        } else if (event === "done") {
          turn.stats = data.stats;
          view.stats.textContent = formatStats(data.stats);
        } else if (event === "error") {
          throw new Error(data.error.message);
        }
      });
    }
  } catch (error) {
    turn.error = error.message;
    view.error.textContent = error.message;
  } finally {
    view.answer.classList.remove("streaming");
    turns.push(turn);
    saveConversation(turns);
  }
}

// --- documents ----------------------------------------------------------------------------

async function pollJob(jobId, row) {
  const bar = row.querySelector("progress");
  const label = row.querySelector("span");
  for (;;) {
    const response = await fetch("/v1/jobs/" + encodeURIComponent(jobId), { headers: authHeaders() });
    if (!response.ok) { label.textContent = await errorMessage(response); return; }
    const job = await response.json();
    bar.value = job.progress;
    label.textContent = job.status + " (" + job.chunks_stored + "/" + job.chunks_total + " chunks cached)" +
      (job.error ? ": " + job.error : "");
    row.dataset.status = job.status;
    if (job.status === "done" || job.status === "failed") { refreshDocuments(); return; }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

async function upload(files) {
  const form = new FormData();
  const names = [];
  for (const file of files) { form.append("files", file, file.name); names.push(file.name); }
  const row = element("li", "job");
  row.append(element("div", null, names.join(", ")), element("progress"), element("span", null, "uploading"));
  row.querySelector("progress").max = 1;
  $("jobs").prepend(row);
  const response = await fetch("/v1/documents", { method: "POST", headers: authHeaders(), body: form });
  if (!response.ok) {
    row.dataset.status = "failed";
    row.querySelector("span").textContent = await errorMessage(response);
    return;
  }
  const accepted = await response.json();
  row.dataset.jobId = accepted.job_id;
  await pollJob(accepted.job_id, row);
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
    remove.addEventListener("click", async () => {
      const deleted = await fetch("/v1/documents/" + encodeURIComponent(doc.id),
        { method: "DELETE", headers: authHeaders() });
      if (deleted.ok) item.remove();
    });
    item.append(element("span", null, name + " (" + doc.chunk_count + " chunks)"), remove);
    list.append(item);
  }
}

// --- wiring -------------------------------------------------------------------------------

function init() {
  const keyInput = $("api-key");
  keyInput.value = localStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("change", () => {
    if (keyInput.value) localStorage.setItem(KEY_STORAGE, keyInput.value);
    else localStorage.removeItem(KEY_STORAGE);
    refreshDocuments();
  });
  loadConversation().forEach(renderTurn);
  $("ask-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const question = $("question").value.trim();
    if (!question) return;
    $("question").value = "";
    $("ask").disabled = true;
    try { await ask(question); } finally { $("ask").disabled = false; }
  });
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("ask").click(); }
  });
  $("clear").addEventListener("click", () => {
    saveConversation([]);
    $("conversation").replaceChildren();
  });
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const files = Array.from($("files").files);
    if (files.length) upload(files);
    $("files").value = "";
  });
  $("refresh-documents").addEventListener("click", refreshDocuments);
  refreshDocuments();
}

init();
