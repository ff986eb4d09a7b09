// openseason web chat: talks to this server's /v1/chat/completions with "stream": true and shows
// the answer as the tokens arrive (server-sent events read from a fetch() body stream).
//
// It works with any checkpoint: the max-tokens default comes from the model's context window
// (`context_length` in GET /v1/models), and when the conversation outgrows that window the oldest
// turns are forgotten, as `openseason chat` does. The page has no tokenizer, so it lets the server
// count: on a 400 `context_length_exceeded` it drops the oldest turn (or, when there is room for at
// least min(max tokens, 16) tokens, asks for a shorter answer) and retries, then tells the user.
// On a key-protected server (--api-key) it asks for the key and keeps it for this tab only.
// A multimodal checkpoint ("images" in GET /v1/models) gets an image picker: the chosen file goes
// with the next message as an OpenAI image_url part (a base64 data URL), within the server's limits.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const messagesEl = $("messages"), input = $("input"), sendBtn = $("send"), stopBtn = $("stop");
  const statusEl = $("status"), modelEl = $("model"), contextEl = $("context"), maxTokensEl = $("max-tokens");
  const authForm = $("auth"), keyInput = $("api-key"), forgetKeyBtn = $("forget-key");
  const KEY_ITEM = "openseason-api-key";
  const MIN_ROOM = 16;      // like `openseason chat`: forget turns until an answer has this much room
  const history = [];       // turns the model still sees: {role, content, el}
  let model = null, contextLength = null, controller = null, conversation = 0;
  let maxTokensEdited = false;
  let imageLimits = null, pendingImage = null;   // {name, url}: goes with the next message
  const imageInput = $("image"), attachedEl = $("attached");

  // -- API key: asked for on a 401, kept in sessionStorage (this tab, until it is closed) ----------
  function apiKey() { return sessionStorage.getItem(KEY_ITEM) || ""; }

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = apiKey();
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  function askForKey() {
    $("auth-message").textContent = apiKey()
      ? "The server did not accept this API key; enter the right one."
      : "This server needs an API key (the one given to `openseason serve --api-key`).";
    authForm.hidden = false;
    keyInput.focus();
  }

  authForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = keyInput.value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_ITEM, key);
    keyInput.value = "";
    authForm.hidden = true;
    forgetKeyBtn.hidden = false;
    loadModel().then(() => input.focus());
  });
  forgetKeyBtn.addEventListener("click", () => {
    sessionStorage.removeItem(KEY_ITEM);
    forgetKeyBtn.hidden = true;
    model = null;
    loadModel();
  });
  forgetKeyBtn.hidden = !apiKey();

  // -- messages -------------------------------------------------------------------------------------
  function addMessage(role, text, before, imageUrl) {
    const el = document.createElement("div");
    el.className = "msg " + role;
    el.textContent = text;
    if (imageUrl) {
      const img = document.createElement("img");
      img.src = imageUrl;
      img.alt = "attached image";
      el.prepend(img);
    }
    messagesEl.insertBefore(el, before || null);
    messagesEl.scrollTop = messagesEl.scrollHeight;
    return el;
  }

  // The error body of a failed response: {message, code} (OpenAI's error shape), or the HTTP status.
  async function errorOf(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return body.error;
    } catch (e) { /* not JSON */ }
    return { message: "HTTP " + response.status, code: null };
  }

  async function loadModel() {
    let r;
    try {
      r = await fetch("/v1/models", { headers: headers() });
    } catch (e) {
      modelEl.textContent = "(server unreachable)";
      return false;
    }
    if (r.status === 401) {
      modelEl.textContent = "(API key needed)";
      askForKey();
      return false;
    }
    if (!r.ok) { modelEl.textContent = "(" + (await errorOf(r)).message + ")"; return false; }
    const info = (await r.json()).data[0];
    model = info.id;
    modelEl.textContent = model;
    modelEl.dataset.ready = "true";
    contextLength = Number.isInteger(info.context_length) && info.context_length > 1 ? info.context_length : null;
    imageLimits = info.images || null;
    $("attach").hidden = !imageLimits;
    if (contextLength) {
      contextEl.textContent = contextLength + "-token context";
      maxTokensEl.max = String(contextLength - 1);
      // a default that leaves room for the conversation: half the window, at most 256
      if (!maxTokensEdited) maxTokensEl.value = String(Math.max(1, Math.min(256, Math.floor(contextLength / 2))));
    }
    return true;
  }
  maxTokensEl.addEventListener("input", () => { maxTokensEdited = true; });

  function requestedMaxTokens() {
    let n = parseInt(maxTokensEl.value, 10);
    if (!(n >= 1)) n = contextLength ? Math.min(256, Math.floor(contextLength / 2)) : 256;
    return contextLength ? Math.min(n, contextLength - 1) : n;
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

  class AuthError extends Error {}

  // The prompt's token count from a context_length_exceeded message ("... (58 in the prompt, ..."), or null.
  function promptTokens(message) {
    const m = /\((\d+) in the prompt/.exec(message || "");
    return m ? parseInt(m[1], 10) : null;
  }

  // Number of history entries making up the oldest turn (a user message and its answer).
  function oldestTurnLength(turns, start) {
    if (start >= turns.length) return 0;
    return start + 1 < turns.length && turns[start + 1].role === "assistant" ? 2 : 1;
  }

  // POSTs the conversation (history from `start`, then `turn`), forgetting old turns and shrinking
  // max_tokens as the server's context_length_exceeded answers say; returns {response, start, maxTokens}.
  async function request(turn, maxTokens, signal) {
    let start = 0, auto = false;
    const system = $("system").value.trim();
    for (let attempt = 0; attempt < history.length + 4; attempt++) {
      const messages = [];
      if (system) messages.push({ role: "system", content: system });
      for (const t of history.slice(start)) messages.push({ role: t.role, content: t.content });
      messages.push({ role: turn.role, content: turn.content });
      const payload = { model: model, messages: messages, stream: true, temperature: Number($("temperature").value) };
      if (!auto) payload.max_tokens = maxTokens;   // auto: the server fills the room that is left
      const r = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), body: JSON.stringify(payload), signal: signal,
      });
      if (r.ok) return { response: r, start: start, maxTokens: auto ? null : maxTokens };
      const error = await errorOf(r);
      if (r.status === 401) throw new AuthError(error.message);
      if (error.code !== "context_length_exceeded") throw new Error(error.message);
      const prompt = promptTokens(error.message);
      const room = contextLength && prompt !== null ? contextLength - prompt : null;
      const older = oldestTurnLength(history, start);
      if (room !== null && room >= 1 && (room >= Math.min(maxTokens, MIN_ROOM) || !older)) {
        maxTokens = room;            // the conversation fits with a shorter answer
      } else if (older) {
        start += older;              // forget the oldest turn and try again
      } else if (room === null && !auto) {
        auto = true;                 // the message did not say how long the prompt is: let the server choose
      } else if (prompt !== null && contextLength) {
        throw new Error("this message is " + prompt + " tokens" + (system ? " with the system prompt" : "") +
                        "; the model's context window is " + contextLength + " tokens: send a shorter message");
      } else {
        throw new Error(error.message);
      }
    }
    throw new Error("the conversation does not fit the model's context window; press reset");
  }

  // -- images: read the chosen file as a data URL; it is sent with the next message -------------
  function clearImage() {
    pendingImage = null;
    imageInput.value = "";
    attachedEl.hidden = true;
    attachedEl.textContent = "";
  }

  function showImage(image) {
    pendingImage = image;
    attachedEl.textContent = "📎 " + image.name;
    attachedEl.hidden = false;
    attachedEl.dataset.ready = "true";
  }

  imageInput.addEventListener("change", () => {
    const file = imageInput.files && imageInput.files[0];
    if (!file) { clearImage(); return; }
    if (imageLimits && file.size > imageLimits.max_bytes) {
      addMessage("error", "the image is " + file.size + " bytes; this server takes at most " + imageLimits.max_bytes);
      clearImage();
      return;
    }
    const reader = new FileReader();
    reader.onload = () => showImage({ name: file.name, url: reader.result });
    reader.readAsDataURL(file);
  });

  async function send(text) {
    if (!model && !(await loadModel())) { restoreInput(text); return; }
    const thisConversation = conversation;
    const image = pendingImage;
    const userEl = addMessage("user", text, null, image && image.url);
    const out = addMessage("assistant", "");
    out.dataset.done = "false";
    const content = image ? [{ type: "image_url", image_url: { url: image.url } }, { type: "text", text: text }] : text;
    const turn = { role: "user", content: content, el: userEl };
    clearImage();
    controller = new AbortController();
    setBusy(true);
    let answer = "", finish = null, sent = null;
    try {
      sent = await request(turn, requestedMaxTokens(), controller.signal);
      if (sent.start > 0) forget(sent.start, userEl);
      for await (const chunk of events(sent.response.body)) {
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
    } catch (e) {
      if (e.name !== "AbortError" || sent === null) {   // nothing answered: the turn did not happen
        out.remove();
        userEl.remove();
        restoreInput(text);
        if (image && !pendingImage) showImage(image);   // the image waits for the next try too
        if (e instanceof AuthError) askForKey();
        else if (e.name !== "AbortError") addMessage("error", e.message);
        setBusy(false);
        controller = null;
        return;
      }
    }
    controller = null;
    out.dataset.done = "true";
    out.dataset.finish = finish || "stopped";
    if (finish === "length") {
      const limit = sent.maxTokens ? sent.maxTokens + " tokens" : "the end of the context window";
      addMessage("note", "answer cut at max tokens (" + limit + "); raise max tokens in settings for longer answers")
        .dataset.kind = "length";
    }
    if (thisConversation === conversation) {
      history.push(turn, { role: "assistant", content: answer, el: out });
    }
    setBusy(false);
  }

  // Forget the first `count` history entries: the model no longer sees them; the page greys them out.
  function forget(count, before) {
    const gone = history.splice(0, count);
    const turns = gone.filter((t) => t.role === "user").length;
    for (const t of gone) {
      t.el.classList.add("forgotten");
      t.el.title = "forgotten: no longer sent to the model (outside its context window)";
    }
    const where = contextLength ? "the model's " + contextLength + "-token context window" : "the context window";
    addMessage("note", "(forgot the " + (turns === 1 ? "oldest turn" : turns + " oldest turns") +
               " to stay inside " + where + ")", before).dataset.kind = "forgot";
  }

  function restoreInput(text) {
    if (!input.value.trim()) input.value = text;
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
    conversation += 1;
    history.length = 0;
    messagesEl.textContent = "";
  });
  $("settings-toggle").addEventListener("click", (ev) => {
    const panel = $("settings");
    panel.hidden = !panel.hidden;
    ev.currentTarget.setAttribute("aria-expanded", String(!panel.hidden));
  });

  loadModel();
})();
