// The sluice console: sign in against the user pool (Cognito's JSON protocol on the
// edge), upload files to the upload API with the ID token, and watch them through the
// pipeline (GET /uploads, then the server-sent events of GET /uploads/events).
// Plain DOM code: no framework, no build step, nothing loaded from elsewhere.

const $ = (id) => document.getElementById(id);
const STORE = "sluice.session";
const PARALLEL_UPLOADS = 3;

let config = null;
let session = null; // { email, idToken, accessToken, refreshToken, expiresAt (ms) }
let refreshTimer = 0;
let live = null; // AbortController of the event stream
let nextPage = null;
const rows = new Map(); // uploadId -> <tr>

// ---------------------------------------------------------------- small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) node.append(c);
  return node;
}

function notice(text) {
  $("notice").textContent = text;
}

function formatSize(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = -1;
  do {
    v /= 1024;
    u += 1;
  } while (v >= 1024 && u < units.length - 1);
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

function formatTime(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

// ---------------------------------------------------------------- Cognito

function edgeUrl() {
  if (config.edgeUrl) return config.edgeUrl;
  return `${location.protocol}//${location.hostname}:${config.edgePort}`;
}

class CognitoError extends Error {
  constructor(type, message) {
    super(message || type);
    this.type = type;
  }
}

async function cognito(operation, body) {
  let resp;
  try {
    resp = await fetch(`${edgeUrl()}/`, {
      method: "POST",
      headers: {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": `AWSCognitoIdentityProviderService.${operation}`,
      },
      body: JSON.stringify(body),
    });
  } catch (e) {
    throw new CognitoError("NetworkError", `cannot reach the sign-in service at ${edgeUrl()}`);
  }
  const text = await resp.text();
  let json = {};
  try {
    json = text ? JSON.parse(text) : {};
  } catch (e) {
    json = {};
  }
  if (!resp.ok) {
    const type = String(json.__type || resp.headers.get("x-amzn-ErrorType") || "Error").split(":")[0].split("#").pop();
    throw new CognitoError(type, json.message || json.Message || `${operation} failed (${resp.status})`);
  }
  return json;
}

function claimsOf(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
  } catch (e) {
    return {};
  }
}

/// Whether the signed-in user is an operator (in the pool's `admin` group). The server
/// checks this itself on every operator request; the console only decides what to show.
function isOperator() {
  if (!session) return false;
  const groups = claimsOf(session.idToken)["cognito:groups"] || [];
  return groups.includes("admin");
}

function keep(result, email, refreshToken) {
  session = {
    email,
    idToken: result.IdToken,
    accessToken: result.AccessToken,
    refreshToken: result.RefreshToken || refreshToken,
    expiresAt: Date.now() + (result.ExpiresIn || 3600) * 1000,
  };
  sessionStorage.setItem(STORE, JSON.stringify(session));
  scheduleRefresh();
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  if (!session) return;
  // A minute before expiry (or at once when it is nearer than that).
  const wait = Math.max(0, session.expiresAt - Date.now() - 60_000);
  refreshTimer = setTimeout(() => refresh().catch(() => {}), wait);
}

async function refresh() {
  if (!session || !session.refreshToken) throw new Error("no session");
  try {
    const r = await cognito("InitiateAuth", {
      AuthFlow: "REFRESH_TOKEN_AUTH",
      ClientId: config.clientId,
      AuthParameters: { REFRESH_TOKEN: session.refreshToken },
    });
    keep(r.AuthenticationResult, session.email, session.refreshToken);
  } catch (e) {
    if (e.type === "NetworkError") {
      // The edge is away for a moment: try again shortly, keep the session.
      refreshTimer = setTimeout(() => refresh().catch(() => {}), 5_000);
      throw e;
    }
    endSession("Your session ended; please sign in again.");
    throw e;
  }
}

/// The ID token, refreshed first when it is about to expire.
async function idToken() {
  if (!session) throw new Error("not signed in");
  if (session.expiresAt - Date.now() < 30_000) await refresh();
  return session.idToken;
}

// ---------------------------------------------------------------- views

function show(view) {
  for (const id of ["sign-in", "new-password", "mfa-code", "app", "operations"]) $(id).hidden = id !== view;
  const signedIn = view === "app" || view === "operations";
  $("who").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
  $("nav").hidden = !signedIn;
  $("nav-operations").hidden = !(signedIn && isOperator());
  if (signedIn) $("who").textContent = session.email;
  $("nav-uploads").toggleAttribute("aria-current", view === "app");
  if (view === "app") $("nav-uploads").setAttribute("aria-current", "page");
  $("nav-operations").toggleAttribute("aria-current", view === "operations");
  if (view === "operations") $("nav-operations").setAttribute("aria-current", "page");
  const focus = {
    "sign-in": "email",
    "new-password": "new-password-1",
    "mfa-code": "mfa-code-input",
    app: "main",
    operations: "main",
  }[view];
  $(focus).focus();
}

let challenge = null; // { email, session, name } of the sign-in step under way

async function onSignIn(event) {
  event.preventDefault();
  const email = $("email").value.trim();
  const password = $("password").value;
  $("sign-in-error").textContent = "";
  if (!email || !password) {
    $("sign-in-error").textContent = "Enter your email and password.";
    return;
  }
  const button = event.submitter || $("sign-in-form").querySelector("button");
  button.disabled = true;
  try {
    const r = await cognito("InitiateAuth", {
      AuthFlow: "USER_PASSWORD_AUTH",
      ClientId: config.clientId,
      AuthParameters: { USERNAME: email, PASSWORD: password },
    });
    $("password").value = "";
    next(r, email, $("sign-in-error"));
  } catch (e) {
    $("sign-in-error").textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

// The second factors whose code the console asks for, and where the code goes.
const CODE_CHALLENGES = {
  SOFTWARE_TOKEN_MFA: { field: "SOFTWARE_TOKEN_MFA_CODE", hint: () => "Enter the code your authenticator app shows." },
  SMS_MFA: { field: "SMS_MFA_CODE", hint: (p) => `Enter the code sent to ${p.CODE_DELIVERY_DESTINATION}.` },
  EMAIL_OTP: { field: "EMAIL_OTP_CODE", hint: (p) => `Enter the code sent to ${p.CODE_DELIVERY_DESTINATION}.` },
};

/// What follows an answer of InitiateAuth / RespondToAuthChallenge: the app, the next
/// step the console offers, or an error in `errorBox`.
function next(r, email, errorBox) {
  if (r.AuthenticationResult) {
    challenge = null;
    keep(r.AuthenticationResult, email);
    enterApp();
  } else if (r.ChallengeName === "NEW_PASSWORD_REQUIRED") {
    challenge = { email, session: r.Session };
    show("new-password");
  } else if (CODE_CHALLENGES[r.ChallengeName]) {
    challenge = { email, session: r.Session, name: r.ChallengeName };
    $("mfa-code-hint").textContent = CODE_CHALLENGES[r.ChallengeName].hint(r.ChallengeParameters || {});
    $("mfa-code-input").value = "";
    $("mfa-code-error").textContent = "";
    show("mfa-code");
  } else {
    challenge = null;
    show("sign-in");
    (errorBox || $("sign-in-error")).textContent =
      `Sign-in needs a step this console does not offer (${r.ChallengeName}).`;
  }
}

async function onMfaCode(event) {
  event.preventDefault();
  const code = $("mfa-code-input").value.trim();
  $("mfa-code-error").textContent = "";
  if (!code) {
    $("mfa-code-error").textContent = "Enter the code.";
    return;
  }
  const button = event.submitter || $("mfa-code-form").querySelector("button");
  button.disabled = true;
  try {
    const r = await cognito("RespondToAuthChallenge", {
      ChallengeName: challenge.name,
      ClientId: config.clientId,
      Session: challenge.session,
      ChallengeResponses: { USERNAME: challenge.email, [CODE_CHALLENGES[challenge.name].field]: code },
    });
    next(r, challenge.email, $("sign-in-error"));
  } catch (e) {
    $("mfa-code-error").textContent = e.message;
    if (e.type === "NotAuthorizedException") {
      // The challenge session expired or took too many wrong codes: start again.
      show("sign-in");
      $("sign-in-error").textContent = e.message;
    }
  } finally {
    button.disabled = false;
  }
}

async function onNewPassword(event) {
  event.preventDefault();
  const a = $("new-password-1").value;
  const b = $("new-password-2").value;
  $("new-password-error").textContent = "";
  if (!a) {
    $("new-password-error").textContent = "Enter a new password.";
    return;
  }
  if (a !== b) {
    $("new-password-error").textContent = "The two passwords differ.";
    return;
  }
  const button = event.submitter || $("new-password-form").querySelector("button");
  button.disabled = true;
  try {
    const r = await cognito("RespondToAuthChallenge", {
      ChallengeName: "NEW_PASSWORD_REQUIRED",
      ClientId: config.clientId,
      Session: challenge.session,
      ChallengeResponses: { USERNAME: challenge.email, NEW_PASSWORD: a },
    });
    $("new-password-1").value = "";
    $("new-password-2").value = "";
    next(r, challenge.email, $("sign-in-error"));
  } catch (e) {
    $("new-password-error").textContent = e.message;
    if (e.type === "NotAuthorizedException" || e.type === "CodeMismatchException") {
      // The challenge session expired: start again.
      show("sign-in");
      $("sign-in-error").textContent = e.message;
    }
  } finally {
    button.disabled = false;
  }
}

async function onSignOut() {
  const s = session;
  endSession("Signed out.");
  if (s) {
    // Ends every session of the user on the server too (its refresh tokens stop working).
    cognito("GlobalSignOut", { AccessToken: s.accessToken }).catch(() => {});
  }
}

function endSession(message) {
  clearTimeout(refreshTimer);
  stopOperations();
  if (live) live.abort();
  live = null;
  session = null;
  sessionStorage.removeItem(STORE);
  rows.clear();
  $("upload-rows").replaceChildren();
  $("transfers").replaceChildren();
  notice(message);
  show("sign-in");
}

// ---------------------------------------------------------------- the upload API

async function api(path, options = {}) {
  const token = await idToken();
  const resp = await fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), Authorization: `Bearer ${token}` },
  });
  if (resp.status === 401) {
    await refresh();
    return fetch(path, {
      ...options,
      headers: { ...(options.headers || {}), Authorization: `Bearer ${session.idToken}` },
    });
  }
  return resp;
}

async function errorText(resp) {
  try {
    const j = await resp.json();
    return j.message || `${resp.status}`;
  } catch (e) {
    return `${resp.status} ${resp.statusText}`;
  }
}

// ---------------------------------------------------------------- uploading

const queue = [];
let running = 0;

function addFiles(files) {
  for (const file of files) {
    const bar = el("progress", { max: "100", value: "0", "aria-label": `Upload of ${file.name}` });
    const state = el("span", { class: "state" }, "waiting");
    const item = el("li", {}, el("span", { class: "name" }, file.name), state, bar);
    $("transfers").append(item);
    queue.push({ file, bar, state, item });
  }
  pump();
}

function pump() {
  while (running < PARALLEL_UPLOADS && queue.length > 0) {
    const job = queue.shift();
    running += 1;
    send(job)
      .catch((e) => {
        job.state.textContent = `failed: ${e.message}`;
        job.state.className = "state failure";
      })
      .finally(() => {
        running -= 1;
        pump();
      });
  }
}

async function send(job, retried = false) {
  const token = await idToken();
  job.state.textContent = "uploading";
  const form = new FormData();
  form.append("file", job.file, job.file.name);
  // XMLHttpRequest, not fetch: it reports upload progress. The form's file part is read
  // from disk as it is sent, and the server streams it to storage.
  const { status, body } = await new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/uploads");
    xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) job.bar.value = Math.round((e.loaded / e.total) * 100);
    };
    xhr.onload = () => resolve({ status: xhr.status, body: xhr.response });
    xhr.onerror = () => reject(new Error("the connection broke"));
    xhr.send(form);
  });
  if (status === 401 && !retried) {
    await refresh();
    return send(job, true);
  }
  if (status !== 200) {
    throw new Error((body && body.message) || `HTTP ${status}`);
  }
  job.bar.value = 100;
  job.state.textContent = "uploaded";
  job.item.dataset.uploadId = body.uploadId;
  // The row appears at once; the live view moves it on from there.
  const r = await api(`/uploads/${encodeURIComponent(body.uploadId)}`);
  if (r.ok) upsert(await r.json(), true);
  setTimeout(() => job.item.remove(), 4_000);
}

function wireDrop() {
  const drop = $("drop");
  $("file-input").addEventListener("change", (e) => {
    addFiles([...e.target.files]);
    e.target.value = "";
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addFiles([...e.dataTransfer.files]);
  });
}

// ---------------------------------------------------------------- my uploads

function downloadButton(label, upload, which) {
  return el(
    "button",
    {
      type: "button",
      class: "link",
      "data-action": which,
      "aria-label": `${label}: ${upload.filename}`,
      onclick: () => download(upload.uploadId, which).catch((e) => notice(`Download failed: ${e.message}`)),
    },
    label,
  );
}

function cells(u) {
  const status = el("span", { class: `status status-${u.status}` }, u.status);
  const statusCell = el("td", { "data-label": "Status", class: "status-cell" }, status);
  if (u.status === "failed" && u.error) {
    statusCell.append(el("div", { class: "failure" }, u.error));
  }
  const actions = el("td", { "data-label": "Download" }, downloadButton("Original", u, "content"));
  if (u.status === "processed") actions.append(downloadButton("Result", u, "processed"));
  return [
    el("td", { "data-label": "File", class: "name" }, u.filename),
    el("td", { "data-label": "Size" }, formatSize(u.size)),
    statusCell,
    el("td", { "data-label": "Uploaded" }, formatTime(u.createdAt)),
    actions,
  ];
}

/// Puts an upload's row in the table (new rows on top when `newest`), or updates it.
function upsert(u, newest = false) {
  let tr = rows.get(u.uploadId);
  if (tr) {
    // An older snapshot never replaces a newer one.
    if (tr.dataset.updatedAt && tr.dataset.updatedAt > u.updatedAt) return;
    tr.replaceChildren(...cells(u));
  } else {
    tr = el("tr", {}, ...cells(u));
    rows.set(u.uploadId, tr);
    if (newest) $("upload-rows").prepend(tr);
    else $("upload-rows").append(tr);
  }
  tr.dataset.uploadId = u.uploadId;
  tr.dataset.status = u.status;
  tr.dataset.updatedAt = u.updatedAt;
  $("empty").hidden = rows.size > 0;
}

async function loadPage() {
  const q = new URLSearchParams({ limit: "25" });
  if (nextPage) q.set("next", nextPage);
  const r = await api(`/uploads?${q}`);
  if (!r.ok) throw new Error(await errorText(r));
  const page = await r.json();
  for (const u of page.uploads) upsert(u);
  nextPage = page.next || null;
  $("more").hidden = !nextPage;
  $("empty").hidden = rows.size > 0;
}

async function download(id, which) {
  const r = await api(`/uploads/${encodeURIComponent(id)}/${which}`);
  if (!r.ok) throw new Error(await errorText(r));
  const disposition = r.headers.get("Content-Disposition") || "";
  const star = /filename\*=UTF-8''([^;]+)/i.exec(disposition);
  const plain = /filename="([^"]*)"/i.exec(disposition);
  const name = star ? decodeURIComponent(star[1]) : plain ? plain[1] : `${id}-${which}`;
  const blob = await r.blob();
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// ---------------------------------------------------------------- the live view

/// Reads GET /uploads/events (server-sent events) with fetch, which can send the token
/// (EventSource cannot), and reconnects with Last-Event-ID whenever the stream ends.
async function watch(since) {
  const controller = new AbortController();
  live = controller;
  let lastId = String(since);
  let delay = 1_000;
  while (!controller.signal.aborted) {
    try {
      const token = await idToken();
      const resp = await fetch("/uploads/events", {
        headers: { Authorization: `Bearer ${token}`, "Last-Event-ID": lastId },
        signal: controller.signal,
      });
      if (resp.status === 401) {
        await refresh();
        continue;
      }
      if (!resp.ok || !resp.body) throw new Error(await errorText(resp));
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let event = { name: "message", data: [], id: null };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let nl;
        while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
          if (line === "") {
            if (event.id !== null) lastId = event.id;
            handle(event.name, event.data.join("\n"));
            event = { name: "message", data: [], id: null };
            continue;
          }
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "event") event.name = val;
          else if (field === "data") event.data.push(val);
          else if (field === "id") event.id = val;
        }
      }
      delay = 1_000;
    } catch (e) {
      if (controller.signal.aborted) return;
      setLive(`reconnecting (${e.message})`);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 30_000);
    }
  }
}

function setLive(text) {
  $("live").textContent = text;
}

function handle(name, data) {
  if (name === "ready") {
    setLive("live");
  } else if (name === "upload") {
    try {
      upsert(JSON.parse(data), true);
    } catch (e) {
      /* a malformed event is skipped */
    }
  } else if (name === "unauthorized") {
    setLive("renewing sign-in…");
    refresh().catch(() => {});
  } else if (name === "error") {
    setLive("reconnecting…");
  }
}


// ---------------------------------------------------------------- operations (admin group)

let opsTimer = 0;
let logTimer = 0;
let logMapping = null;

function td(label, ...children) {
  return el("td", { "data-label": label }, ...children);
}

function startOperations() {
  stopOperations();
  const tick = () => {
    refreshOperations()
      .then(() => {
        $("ops-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      })
      .catch((e) => {
        $("ops-updated").textContent = `cannot refresh: ${e.message}`;
      });
    opsTimer = setTimeout(tick, 5_000);
  };
  tick();
}

function stopOperations() {
  $("new-key").hidden = true;
  $("new-key-text").textContent = "";
  clearTimeout(opsTimer);
  opsTimer = 0;
  closeLogs();
}

async function adminGet(path) {
  const r = await api(path);
  if (!r.ok) throw new Error(await errorText(r));
  return r.json();
}

async function adminPost(path, body, method = "POST") {
  const options = { method };
  if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers = { "Content-Type": "application/json" };
  }
  const r = await api(path, options);
  if (!r.ok) throw new Error(await errorText(r));
  return r.json();
}


const PALETTE = ["#0b5cad", "#b8441f", "#2e7d32", "#7b3fa0", "#a0761a", "#00796b"];
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  return n;
}

function short(n) {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return n >= 10 || n === 0 ? n.toFixed(0) : n.toFixed(2);
}

/// A line chart of named series ([{t, v}]) over the last hour, as inline SVG.
function chart(id, title, series) {
  // Drawn at the container's own width, so that text keeps its proportions.
  const W = Math.max(240, Math.round($(id).clientWidth || 600));
  const H = 140;
  const now = Date.now();
  const from = now - 3_600_000;
  const names = Object.keys(series);
  const max = Math.max(1e-9, ...names.flatMap((n) => series[n].map((p) => p.v)));
  const x = (t) => ((t - from) / 3_600_000) * (W - 40) + 36;
  const y = (v) => H - 16 - (v / max) * (H - 28);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, focusable: "false" });
  root.append(svg("line", { class: "axis", x1: 36, y1: H - 16, x2: W - 4, y2: H - 16 }));
  root.append(svg("line", { class: "axis", x1: 36, y1: 8, x2: 36, y2: H - 16 }));
  const label = (text, attrs) => {
    const t = svg("text", attrs);
    t.textContent = text;
    return t;
  };
  root.append(label(short(max), { x: 2, y: 16 }));
  root.append(label("0", { x: 2, y: H - 18 }));
  root.append(label("−60 min", { x: 38, y: H - 3 }));
  root.append(label("now", { x: W - 28, y: H - 3 }));
  const legend = el("div", { class: "legend" });
  const summary = [];
  names.forEach((name, i) => {
    const color = PALETTE[i % PALETTE.length];
    const pts = series[name].filter((p) => p.t >= from);
    if (pts.length > 0) {
      root.append(
        svg("polyline", {
          points: pts.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" "),
          fill: "none",
          stroke: color,
          "stroke-width": 2,
        }),
      );
      // The newest point, marked (a series of one point draws no line).
      const end = pts[pts.length - 1];
      root.append(svg("circle", { cx: x(end.t).toFixed(1), cy: y(end.v).toFixed(1), r: 3, fill: color }));
      const last = end.v;
      const peak = Math.max(...pts.map((p) => p.v));
      summary.push(`${name}: now ${short(last)}, peak ${short(peak)}`);
    }
    const item = el("span", {}, name);
    item.style.setProperty("--swatch", color);
    legend.append(item);
  });
  const box = el("div", {
    role: "img",
    "aria-label": `${title}, last hour. ${summary.join("; ") || "No data yet (a point every 10 s)."}`,
  });
  box.append(root);
  if (names.length === 0) legend.append(el("span", {}, "collecting… (a point every 10 s)"));
  $(id).replaceChildren(box, legend);
}

async function refreshCharts() {
  const h = await adminGet("/admin/history");
  const pick = (src, field) => {
    const out = {};
    for (const [name, pts] of Object.entries(src || {})) out[name] = pts.map((p) => ({ t: p.t, v: p[field] }));
    return out;
  };
  // One line per shard ("uploads-stream shard 3"; a mapping's age per shard it reads).
  const named = (src) => {
    const out = {};
    for (const [name, pts] of Object.entries(src)) {
      out[name.replace(/shardId-0*(\d)/, "shard $1")] = pts;
    }
    return out;
  };
  chart("chart-records", "Incoming records per second", named(pick(h.shards, "recordsPerSec")));
  chart("chart-bytes", "Incoming bytes per second", named(pick(h.shards, "bytesPerSec")));
  chart("chart-age", "Iterator age in seconds", named(pick(h.mappingShards, "iteratorAgeSecs")));
}

async function refreshOperations() {
  refreshCharts().catch((e) => {
    $("chart-records").textContent = `cannot read the history: ${e.message}`;
  });
  const [overview, failed, users] = await Promise.all([
    adminGet("/admin/overview"),
    adminGet("/admin/failed?limit=50"),
    adminGet("/admin/users"),
  ]);
  const counts = Object.entries(overview.uploads || {})
    .map(([k, v]) => `${v} ${k}`)
    .join(", ");
  $("upload-counts").textContent = `Uploads: ${counts || "none yet"}.`;
  $("stream-rows").replaceChildren(
    ...overview.streams.map((st) =>
      el(
        "tr",
        {},
        td("Stream", st.name),
        td("Status", st.status),
        td("Open shards", String(st.openShards)),
        td("Retention", `${st.retentionHours} h`),
      ),
    ),
  );
  $("mapping-rows").replaceChildren(
    ...overview.mappings.map((m) => {
      const stats = m.stats || {};
      const show = (v) => (v === undefined || v === null ? "-" : String(v));
      return el(
        "tr",
        { "data-mapping": m.name },
        td("Mapping", m.name),
        td("State", m.state),
        td("Function", m.function || "-"),
        td("Last result", m.lastProcessingResult || "-"),
        td("In", show(stats.recordsIn)),
        td("OK", show(stats.succeeded)),
        td("Failed", show(stats.failed)),
        td("Behind (ms)", show(stats.millisBehindLatest)),
        td(
          "Logs",
          el(
            "button",
            { type: "button", class: "link", "aria-label": `Logs of ${m.name}`, onclick: () => openLogs(m.name) },
            "Logs",
          ),
        ),
      );
    }),
  );
  $("failed-rows").replaceChildren(
    ...failed.uploads.map((u) =>
      el(
        "tr",
        { "data-upload-id": u.uploadId },
        td("File", u.filename),
        td("Error", el("span", { class: "failure" }, u.error || "-")),
        td("Attempts", String(u.attempts)),
        td("Failed at", formatTime(u.updatedAt)),
        td(
          "Action",
          el(
            "button",
            {
              type: "button",
              class: "link",
              "aria-label": `Redrive ${u.filename}`,
              onclick: (e) => {
                e.target.disabled = true;
                adminPost(`/admin/uploads/${encodeURIComponent(u.uploadId)}/redrive`)
                  .then(() => notice(`${u.filename} was queued again.`))
                  .catch((err) => notice(`Redrive failed: ${err.message}`))
                  .finally(() => refreshOperations().catch(() => {}));
              },
            },
            "Redrive",
          ),
        ),
      ),
    ),
  );
  $("no-failed").hidden = failed.uploads.length > 0;
  $("user-rows").replaceChildren(
    ...users.users.map((u) => {
      const action = u.enabled ? "disable" : "enable";
      const who = u.email || u.username;
      const isAdmin = u.groups.includes("admin");
      const act = (label, path, method, done) =>
        el(
          "button",
          {
            type: "button",
            class: "link",
            "aria-label": `${label}: ${who}`,
            onclick: () =>
              adminPost(path, undefined, method)
                .then(() => notice(`${who}: ${done}.`))
                .catch((err) => notice(`${label} failed: ${err.message}`))
                .finally(() => refreshOperations().catch(() => {})),
          },
          label,
        );
      const name = encodeURIComponent(u.username);
      return el(
        "tr",
        { "data-username": u.username },
        td("Email", who),
        td("Status", u.status),
        td("Groups", u.groups.join(", ") || "-"),
        td("Enabled", u.enabled ? "yes" : "no"),
        td(
          "Action",
          act(u.enabled ? "Disable" : "Enable", `/admin/users/${name}/${action}`, "POST", `${action}d`),
          isAdmin
            ? act("Remove operator", `/admin/users/${name}/groups/admin`, "DELETE", "no longer an operator")
            : act("Make operator", `/admin/users/${name}/groups/admin`, "PUT", "an operator from their next sign-in"),
        ),
      );
    }),
  );
  const select = $("reset-user");
  const chosen = select.value;
  select.replaceChildren(...users.users.map((u) => el("option", { value: u.username }, u.email || u.username)));
  if (chosen) select.value = chosen;
  const keys = await adminGet("/admin/keys");
  $("key-rows").replaceChildren(
    ...keys.keys.map((k) =>
      el(
        "tr",
        { "data-key": k.accessKeyId },
        td("Key id", k.accessKeyId),
        td("Description", k.description || "-"),
        td("Scope", k.owner ? `IAM ${k.owner}` : k.policy ? JSON.stringify(k.policy) : "full access"),
        td("Created", formatTime(k.createdAt)),
        td(
          "Action",
          el(
            "button",
            {
              type: "button",
              class: "link",
              "aria-label": `Delete key ${k.accessKeyId}`,
              onclick: () =>
                adminPost(`/admin/keys/${encodeURIComponent(k.accessKeyId)}`, undefined, "DELETE")
                  .then(() => notice(`Key ${k.accessKeyId} deleted.`))
                  .catch((err) => notice(`Cannot delete: ${err.message}`))
                  .finally(() => refreshOperations().catch(() => {})),
            },
            "Delete",
          ),
        ),
      ),
    ),
  );
}

function openLogs(name) {
  closeLogs();
  logMapping = name;
  $("log-title").textContent = `Logs of ${name} (live)`;
  $("log-view").hidden = false;
  const tick = () => {
    adminGet(`/admin/mappings/${encodeURIComponent(name)}/logs?lines=200`)
      .then((r) => {
        if (logMapping !== name) return;
        const box = $("log-lines");
        const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
        box.textContent = r.lines.map((l) => `${l.time} ${l.stream} ${l.requestId} ${l.line}`).join("\n") || "(no lines yet)";
        if (atEnd) box.scrollTop = box.scrollHeight;
      })
      .catch((e) => {
        $("log-lines").textContent = `cannot read logs: ${e.message}`;
      });
    logTimer = setTimeout(tick, 2_000);
  };
  tick();
  $("log-lines").focus();
}

function closeLogs() {
  clearTimeout(logTimer);
  logMapping = null;
  $("log-view").hidden = true;
}

function wireOperatorForms() {
  $("create-user-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const email = $("new-user-email").value.trim();
    const temporaryPassword = $("new-user-password").value;
    adminPost("/admin/users", { email, temporaryPassword })
      .then(() => {
        notice(`${email} created; they choose their password at the first sign-in.`);
        $("new-user-email").value = "";
        $("new-user-password").value = "";
      })
      .catch((err) => notice(`Cannot create the user: ${err.message}`))
      .finally(() => refreshOperations().catch(() => {}));
  });
  $("reset-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const username = $("reset-user").value;
    const temporaryPassword = $("reset-password").value;
    adminPost(`/admin/users/${encodeURIComponent(username)}/password`, { temporaryPassword })
      .then(() => {
        notice("Password reset; the user chooses a new one at the next sign-in.");
        $("reset-password").value = "";
      })
      .catch((err) => notice(`Cannot reset the password: ${err.message}`));
  });
  $("create-key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const description = $("key-description").value;
    const text = $("key-policy").value.trim();
    let policy;
    if (text) {
      try {
        policy = JSON.parse(text);
      } catch (err) {
        notice(`The policy is not JSON: ${err.message}`);
        return;
      }
    }
    adminPost("/admin/keys", policy ? { description, policy } : { description })
      .then((k) => {
        $("new-key-text").textContent = `aws_access_key_id = ${k.accessKeyId}\naws_secret_access_key = ${k.secretAccessKey}`;
        $("new-key").hidden = false;
        $("key-description").value = "";
        $("key-policy").value = "";
      })
      .catch((err) => notice(`Cannot create the key: ${err.message}`))
      .finally(() => refreshOperations().catch(() => {}));
  });
}

function route() {
  if (!session) return;
  if (location.hash === "#operations" && isOperator()) {
    show("operations");
    startOperations();
  } else {
    stopOperations();
    show("app");
  }
}

// ---------------------------------------------------------------- start

async function enterApp() {
  if (location.hash === "#operations" && isOperator()) {
    show("operations");
    startOperations();
  } else {
    show("app");
  }
  notice("");
  $("stream-name").textContent = config.stream;
  rows.clear();
  $("upload-rows").replaceChildren();
  nextPage = null;
  const since = Date.now();
  try {
    await loadPage();
  } catch (e) {
    notice(`Cannot list your uploads: ${e.message}`);
  }
  watch(since);
}

async function main() {
  const r = await fetch("/console/config.json");
  config = await r.json();
  $("sign-in-form").addEventListener("submit", onSignIn);
  $("new-password-form").addEventListener("submit", onNewPassword);
  $("mfa-code-form").addEventListener("submit", onMfaCode);
  $("sign-out").addEventListener("click", onSignOut);
  $("more").addEventListener("click", () => loadPage().catch((e) => notice(e.message)));
  $("log-close").addEventListener("click", closeLogs);
  window.addEventListener("hashchange", route);
  wireOperatorForms();
  wireDrop();
  try {
    session = JSON.parse(sessionStorage.getItem(STORE) || "null");
  } catch (e) {
    session = null;
  }
  if (session && session.refreshToken) {
    scheduleRefresh();
    enterApp();
  } else {
    show("sign-in");
  }
}

main().catch((e) => notice(`The console cannot start: ${e.message}`));
