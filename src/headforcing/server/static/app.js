// The live page: frames arrive a chunk at a time and are played at the video's frame rate; the server is
// told how many were played (it waits while too many are unplayed). Enter in #prompt starts a session, or
// switches the prompt of the running one from its next chunk.
const params = new URLSearchParams(location.search);
const token = params.get("token");
const canvas = document.getElementById("video"), ctx = canvas.getContext("2d");
const prompt = document.getElementById("prompt"), message = document.getElementById("message");
const queue = [];
let fps = 4, played = 0, running = false, paused = false, shownAt = performance.now(), shown = 0, madeFps = 0;
const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws${token ? "?token=" + encodeURIComponent(token) : ""}`;
const ws = new WebSocket(url);
const send = (m) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify(m));

ws.onmessage = (event) => {
  const m = JSON.parse(event.data);
  if (m.type === "ready") {
    fps = m.fps;
    [canvas.width, canvas.height] = m.size;
    document.getElementById("policy").innerHTML = m.policies.map((p) => `<option${p === "headforcing" ? " selected" : ""}>${p}</option>`).join("");
    prompt.maxLength = m.max_prompt;
    setInterval(tick, 1000 / fps);
  } else if (m.type === "chunk") {
    for (const src of m.frames) { const img = new Image(); img.src = src; queue.push(img); }
    madeFps = m.stats.fps_made;
    showStats(m.stats);
    document.getElementById("timeline").innerHTML = m.timeline.map((c) => `<li>${c.start_seconds.toFixed(2)} s: ${escape(c.prompt)}</li>`).join("");
  } else if (m.type === "saved") {
    for (const href of [m.video, m.timeline]) {
      const a = document.createElement("a"); a.href = href; a.download = ""; document.body.appendChild(a); a.click(); a.remove();
    }
  } else if (m.type === "error") {
    message.textContent = m.message;
  }
};
ws.onclose = () => { message.textContent = message.textContent || "connection closed"; };

function tick() {  // one frame per 1/fps s: the buffer is played at the video's rate
  if (paused || !queue.length) return;
  const img = queue.shift();
  const draw = () => ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  img.complete ? draw() : (img.onload = draw);
  played += 1; shown += 1;
  if (played % 3 === 0) send({ type: "played", frames: played });
}

function showStats(s) {
  const now = performance.now(), playFps = shown / Math.max((now - shownAt) / 1000, 1e-3);
  shownAt = now; shown = 0;
  const rows = { chunk: s.chunk, "seconds made": s.seconds.toFixed(2), "FPS made": madeFps.toFixed(1), "FPS played": playFps.toFixed(1),
    "cache MiB": s.cache_mib.toFixed(2), "episodic admits / merges / replaces": `${s.episodic.admit} / ${s.episodic.merge} / ${s.episodic.replace}`,
    policy: s.policy, seed: s.seed, buffered: queue.length };
  document.getElementById("stats").innerHTML = Object.entries(rows).map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join("");
}

function escape(text) { const d = document.createElement("div"); d.textContent = text; return d.innerHTML; }

prompt.addEventListener("keydown", (e) => {
  if (e.key !== "Enter" || !prompt.value.trim()) return;
  message.textContent = "";
  if (!running) {
    send({ type: "start", prompt: prompt.value, ...chosen() });
    running = true; queue.length = 0; played = 0;
  } else {
    send({ type: "prompt", prompt: prompt.value });
  }
});
document.getElementById("pause").onclick = (e) => {
  paused = !paused; e.target.textContent = paused ? "resume" : "pause"; send({ type: paused ? "pause" : "resume" });
};
const chosen = () => ({ policy: document.getElementById("policy").value, seed: parseInt(document.getElementById("seed").value || "0", 10) });
document.getElementById("restart").onclick = () => {  // a new session with the prompt in the box, the policy and seed chosen
  queue.length = 0; played = 0; message.textContent = "";
  if (!running) { if (prompt.value.trim()) { send({ type: "start", prompt: prompt.value, ...chosen() }); running = true; } return; }
  send({ type: "restart", prompt: prompt.value.trim() ? prompt.value : undefined, ...chosen() });
};
document.getElementById("stop").onclick = () => { send({ type: "stop" }); running = false; queue.length = 0; played = 0; };
document.getElementById("save").onclick = () => send({ type: "save" });
