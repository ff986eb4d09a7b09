// openseason web chat: talks to this server's /v1/chat/completions with "stream": true and shows
// the answer as the tokens arrive (server-sent events read from a fetch() body stream).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const messagesEl = $("messages"), input = $("input"), sendBtn = $("send"), stopBtn = $("stop");
  const statusEl = $("status"), modelEl = $("model");
  const history = [];   // {role, content} turns of this conversation
  let model = null, controller = null;

  const apiKeyInput = $("api-key");
  apiKeyInput.value = localStorage.getItem("openseason-api-key") || "";
  apiKeyInput.addEventListener("change", () => {
    localStorage.setItem("openseason-api-key", apiKeyInput.value);
    loadModel();
  });

  function headers() {
    const h = { "Content-Type": "application/json" };
    if (apiKeyInput.value) h["Authorization"] = "Bearer " + apiKeyInput.value;
    return h;
  }

  function addMessage(role, text) {
    const el = document.createElement("div");
    el.className = "msg " + role;
    el.textContent = text;
    messagesEl.appendChild(el);
    messagesEl.scrollTop = messagesEl.scrollHeight;
    return el;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (e) { /* not JSON */ }
    return "HTTP " + response.status;
  }

  async function loadModel() {
    try {
      const r = await fetch("/v1/models", { headers: headers() });
      if (!r.ok) { modelEl.textContent = "(" + (await errorText(r)) + ")"; return; }
      const body = await r.json();
      model = body.data[0].id;
      modelEl.textContent = model;
      modelEl.dataset.ready = "true";
    } catch (e) {
      modelEl.textContent = "(server unreachable)";
    }
  }

  function setBusy(busy) {
    sendBtn.disabled = busy;
    stopBtn.hidden = !busy;
    statusEl.textContent = busy ? "generating…" : "";
  }

  // Yields the JSON payload of each "data: ..." event until "[DONE]".
  async function* events(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    while (true) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) !== -1) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of block.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          yield JSON.parse(data);
        }
      }
    }
  }

  async function send(text) {
    if (!model) await loadModel();
    if (!model) { addMessage("error", "no model available"); return; }
    history.push({ role: "user", content: text });
    addMessage("user", text);
    const out = addMessage("assistant", "");
    out.dataset.done = "false";
    const messages = [];
    const system = $("system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...history);
    const payload = {
      model: model, messages: messages, stream: true,
      temperature: Number($("temperature").value),
      max_tokens: Math.max(1, parseInt($("max-tokens").value, 10) || 256),
    };
    controller = new AbortController();
    setBusy(true);
    let answer = "", finish = null;
    try {
      const r = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), body: JSON.stringify(payload), signal: controller.signal,
      });
      if (!r.ok) throw new Error(await errorText(r));
      for await (const chunk of events(r.body)) {
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) {
            answer += choice.delta.content;
            out.textContent = answer;
            messagesEl.scrollTop = messagesEl.scrollHeight;
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
      if (finish === "length") statusEl.dataset.note = "answer cut at max tokens";
    } catch (e) {
      if (e.name !== "AbortError") {
        addMessage("error", e.message);
        history.pop();   // the failed turn is not part of the conversation
        out.remove();
        setBusy(false);
        return;
      }
    } finally {
      controller = null;
    }
    out.dataset.done = "true";
    out.dataset.finish = finish || "stopped";
    history.push({ role: "assistant", content: answer });
    setBusy(false);
  }

  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text || sendBtn.disabled) return;
    input.value = "";
    send(text);
  });
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      $("composer").requestSubmit();
    }
  });
  stopBtn.addEventListener("click", () => { if (controller) controller.abort(); });
  $("reset").addEventListener("click", () => {
    if (controller) controller.abort();
    history.length = 0;
    messagesEl.textContent = "";
  });
  $("settings-toggle").addEventListener("click", (ev) => {
    const panel = $("settings");
    panel.hidden = !panel.hidden;
    ev.target.setAttribute("aria-expanded", String(!panel.hidden));
  });

  loadModel();
})();
