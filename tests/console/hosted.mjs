// A user pool's hosted sign-in page in a real browser: Debian's chromium, headless, driven
// by playwright-core. Run by crates/sluice/tests/console.rs against a server it started,
// with:
//   SLUICE_ISSUER     the pool's issuer (<edge>/<pool id>), whose domain is set up
//   SLUICE_CLIENT_ID  a public app client allowed the code flow with SLUICE_CALLBACK
//   SLUICE_CALLBACK   its callback URL (http://127.0.0.1:PORT/…: the app, served here)
//   SLUICE_LOGOUT     its sign-out URL (on the same port)
//   SLUICE_EMAIL, SLUICE_PASSWORD  a confirmed user
//   SLUICE_OUT        where screenshots go
//   CHROMIUM          the browser (default /usr/bin/chromium)
// Exits 0 when every step passed; otherwise prints the failed step and exits 1.

import { chromium } from "playwright-core";
import crypto from "node:crypto";
import http from "node:http";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const settings = {
  issuer: process.env.SLUICE_ISSUER,
  client: process.env.SLUICE_CLIENT_ID,
  callback: process.env.SLUICE_CALLBACK,
  logout: process.env.SLUICE_LOGOUT,
  email: process.env.SLUICE_EMAIL,
  password: process.env.SLUICE_PASSWORD,
  out: process.env.SLUICE_OUT,
};
for (const [k, v] of Object.entries(settings)) {
  if (!v) {
    console.error(`missing setting: ${k}`);
    process.exit(2);
  }
}
const { issuer, client, callback, logout, email, password, out } = settings;
mkdirSync(out, { recursive: true });

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

const verifier = crypto.randomBytes(48).toString("base64url");
const challenge = crypto.createHash("sha256").update(verifier).digest("base64url");
const authorize = (state) =>
  `${issuer}/oauth2/authorize?` +
  new URLSearchParams({
    response_type: "code",
    client_id: client,
    redirect_uri: callback,
    scope: "openid email",
    state,
    code_challenge: challenge,
    code_challenge_method: "S256",
  });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
let step = "start";
const errors = [];
try {
  const context = await browser.newContext({ viewport: { width: 800, height: 700 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    // A Content-Security-Policy violation is reported here too.
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) {
      errors.push(`console error: ${m.text()}`);
    }
  });
  // The app's callback and sign-out pages, as the app would serve them.
  const app = http.createServer((_, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end("<!doctype html><title>app</title><p>back in the app</p>");
  });
  await new Promise((ok) => app.listen(Number(new URL(callback).port), "127.0.0.1", ok));
  process.on("exit", () => app.close());

  step = "the authorization request shows the sign-in page";
  await page.goto(authorize("first"));
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  check(page.url().includes("/login?"), `at ${page.url()}`);
  await page.screenshot({ path: join(out, "hosted-01-sign-in.png") });

  step = "a wrong password is refused on the page";
  await page.getByLabel("Username").fill(email);
  await page.getByLabel("Password").fill("Not-the-passw0rd!");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "Incorrect username or password" }).waitFor();

  step = "the right password goes back to the app with a code and the state";
  await page.getByLabel("Password").fill(password);
  await Promise.all([
    page.waitForURL((u) => u.href.startsWith(callback)),
    page.getByRole("button", { name: "Sign in" }).click(),
  ]);
  const back = new URL(page.url());
  check(back.searchParams.get("state") === "first", `state in ${back}`);
  const code = back.searchParams.get("code");
  check(code, `code in ${back}`);

  step = "the app redeems the code with its PKCE verifier";
  const r = await fetch(`${issuer}/oauth2/token`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ grant_type: "authorization_code", code, client_id: client,
      redirect_uri: callback, code_verifier: verifier }),
  });
  const tokens = await r.json();
  check(r.status === 200 && tokens.id_token && tokens.access_token, JSON.stringify(tokens));
  const claims = JSON.parse(Buffer.from(tokens.id_token.split(".")[1], "base64url"));
  check(claims.email === email && claims.aud === client, JSON.stringify(claims));

  step = "signed in, the next authorization goes straight back to the app (the cookie works)";
  await page.goto(authorize("second"));
  await page.waitForURL((u) => u.href.startsWith(callback));
  check(new URL(page.url()).searchParams.get("state") === "second", `at ${page.url()}`);

  step = "logout ends the sign-in";
  await page.goto(`${issuer}/logout?` + new URLSearchParams({ client_id: client, logout_uri: logout }));
  await page.waitForURL((u) => u.href.startsWith(logout));
  await page.goto(authorize("third"));
  await page.getByRole("heading", { name: "Sign in" }).waitFor();

  step = "no script or policy errors";
  check(errors.length === 0, errors.join("\n"));
  console.log("hosted UI: every step passed");
  app.close();
} catch (e) {
  console.error(`hosted UI test failed at step "${step}": ${e.message}`);
  if (errors.length) console.error(errors.join("\n"));
  try {
    const pages = browser.contexts().flatMap((c) => c.pages());
    if (pages[0]) await pages[0].screenshot({ path: join(out, "hosted-failure.png"), fullPage: true });
  } catch (_) {
    /* the screenshot is a courtesy */
  }
  await browser.close();
  process.exit(1);
}
await browser.close();
process.exit(0);
