// The live page: frames arrive a chunk at a time and are played at the video's frame rate; the server is
// told how many were played (it waits while too many are unplayed). Enter in #prompt starts a session, or
// switches the prompt of the running one from its next chunk. The socket reconnects by itself (backoff), and
// a busy server is asked again until a slot frees.
const params = new URLSearchParams(location.search);
const token = params.get("token");
const $ = (id) => document.getElementById(id);
const canvas = $("video"), ctx = canvas.getContext("2d");
const prompt = $("prompt"), message = $("message"), notes = $("notes"), status = $("status");
const controls = ["prompt", "policy", "seed", "pause", "restart", "stop", "save"].map($);
const queue = [];
let ws = null, fps = 4, timer = null, played = 0, running = false, paused = false, waiting = false;
let shownAt = performance.now(), shown = 0, madeFps = 0, retry = 500, busyRetry = null, fatal = false;
let skipTo = null;  // after a switch with "skip ahead": frames made under the old prompt are not shown
const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws${token ? "?token=" + encodeURIComponent(token) : ""}`;
const send = (m) => ws && ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify(m));
const chosen = () => ({ policy: $("policy").value, seed: parseInt($("seed").value || "0", 10) });

function setStatus(text, busy) {  // a line under the video: connecting, starting, busy, ended
  status.textContent = text;
  document.body.classList.toggle("loading", Boolean(busy));
}

function connected(on) {  // controls act only while the socket is open
  for (const c of controls) c.disabled = !on;
  document.body.classList.toggle("offline", !on);
}

function connect() {
  connected(false);
  setStatus("connecting...", true);
  ws = new WebSocket(url);
  ws.onmessage = (event) => receive(JSON.parse(event.data));
  ws.onclose = () => {
    connected(false);
    running = false; waiting = false; clearTimeout(busyRetry);
    if (fatal) return;  // the server said why it closed (a token, too many pages): no retry
    setStatus(`disconnected; reconnecting in ${(retry / 1000).toFixed(1)} s`, false);
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 8000);
  };
}

function receive(m) {
  if (m.type === "ready") {
    retry = 500;
    fps = m.fps;
    [canvas.width, canvas.height] = m.size;
    const current = $("policy").value || "headforcing";
    $("policy").innerHTML = m.policies.map((p) => `<option${p === current ? " selected" : ""}>${p}</option>`).join("");
    prompt.maxLength = m.max_prompt;
    $("vocabulary").textContent = m.vocabulary ? `words this model knows: ${m.vocabulary.join(" ")}` : "";
    clearInterval(timer);
    timer = setInterval(tick, 1000 / fps);
    connected(true);
    setStatus(`connected: ${m.sessions} of ${m.max_sessions} sessions running; type a prompt and press Enter`, false);
  } else if (m.type === "chunk") {
    if (waiting) { waiting = false; setStatus("", false); }
    if (skipTo !== null && m.stats.prompt !== skipTo) {  // made before the switch reached the model: counted as played
      played += m.frames.length;
      send({ type: "played", frames: played, visible: document.visibilityState === "visible" });
      return;
    }
    skipTo = null;
    for (const src of m.frames) { const img = new Image(); img.src = src; queue.push(img); }
    madeFps = m.stats.fps_made;
    showStats(m.stats);
    $("timeline").innerHTML = m.timeline.map((c) => `<li>${c.start_seconds.toFixed(2)} s: ${escape(c.prompt)}</li>`).join("");
    $("timeline").scrollTop = $("timeline").scrollHeight;
  } else if (m.type === "saved") {
    for (const href of [m.video, m.timeline]) {
      const a = document.createElement("a"); a.href = href; a.download = ""; document.body.appendChild(a); a.click(); a.remove();
    }
  } else if (m.type === "busy") {  // stays shown; asked again until a slot frees
    running = false;
    setStatus(m.message, true);
    busyRetry = setTimeout(() => start(), 2000);
  } else if (m.type === "ended") {
    running = false; waiting = false; queue.length = 0;
    setStatus(m.message, false);
  } else if (m.type === "note") {
    notes.textContent = m.message;
  } else if (m.type === "error") {
    message.textContent = m.message;
    if (m.fatal) { fatal = true; running = false; setStatus("", false); }
    else if (waiting && !running) setStatus("", false);
  }
}

function start() {  // a new session with the prompt in the box, the policy and seed chosen
  clearTimeout(busyRetry);
  if (!prompt.value.trim()) return;
  message.textContent = ""; notes.textContent = "";
  queue.length = 0; played = 0; waiting = true; running = true; skipTo = null;
  setStatus("starting...", true);
  send({ type: "start", prompt: prompt.value, ...chosen() });
}

function tick() {  // one frame per 1/fps s: the buffer is played at the video's rate
  if (paused || !queue.length) return;
  const img = queue.shift();
  const draw = () => ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  img.complete ? draw() : (img.onload = draw);
  played += 1; shown += 1;
  send({ type: "played", frames: played, visible: document.visibilityState === "visible" });
}

function showStats(s) {
  const now = performance.now(), playFps = shown / Math.max((now - shownAt) / 1000, 1e-3);
  shownAt = now; shown = 0;
  const rows = { policy: s.policy, seed: s.seed, chunk: s.chunk, "seconds made": s.seconds.toFixed(2), "FPS made": madeFps.toFixed(1),
    "FPS played": playFps.toFixed(1), buffered: `${queue.length} frames (server keeps ${s.buffer})`, "cache MiB": s.cache_mib.toFixed(2),
    "episodic a / m / r": `${s.episodic.admit} / ${s.episodic.merge} / ${s.episodic.replace}`, heads: s.heads };
  $("stats").innerHTML = Object.entries(rows).map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join("");
}

function escape(text) { const d = document.createElement("div"); d.textContent = text; return d.innerHTML; }

prompt.addEventListener("keydown", (e) => {
  if (e.key !== "Enter" || !prompt.value.trim()) return;
  if (!running) return start();
  message.textContent = ""; notes.textContent = "";
  send({ type: "prompt", prompt: prompt.value });
  if ($("skip").checked) {  // show the new prompt at once: the buffered frames of the old one are skipped
    skipTo = prompt.value;
    played += queue.length; queue.length = 0;
    send({ type: "played", frames: played, visible: document.visibilityState === "visible" });
  }
});
$("pause").onclick = (e) => {
  paused = !paused; e.target.textContent = paused ? "resume" : "pause"; send({ type: paused ? "pause" : "resume" });
};
$("restart").onclick = () => {
  if (running) { queue.length = 0; played = 0; message.textContent = ""; waiting = true; setStatus("restarting...", true);
    send({ type: "restart", prompt: prompt.value.trim() ? prompt.value : undefined, ...chosen() }); return; }
  start();
};
$("stop").onclick = () => {
  clearTimeout(busyRetry);
  send({ type: "stop" }); running = false; waiting = false; queue.length = 0; played = 0;
  setStatus("stopped: press Enter to start again", false);
};
$("save").onclick = () => send({ type: "save" });
$("smooth").onchange = (e) => canvas.classList.toggle("smooth", e.target.checked);
connect();
