// The web console in a real browser: Debian's chromium, headless, driven by playwright-core.
// Run by crates/sluice/tests/console.rs against a server it started, with:
//   SLUICE_API            the upload API's URL (the console is served there)
//   SLUICE_EMAIL          a user created with a temporary password
//   SLUICE_TEMP_PASSWORD  that password
//   SLUICE_NEW_PASSWORD   the password the user chooses at the NEW_PASSWORD_REQUIRED step
//   SLUICE_EDGE           the AWS edge (Cognito's endpoint)
//   SLUICE_MFA_EMAIL, SLUICE_MFA_PASSWORD  a user who signs in with a software token
//   SLUICE_MFA_ACCESS_TOKEN, SLUICE_MFA_SECRET  that user's access token and the secret of
//                         the token it associated (verified and enabled here)
//   SLUICE_OUT            where screenshots and downloads go
//   CHROMIUM              the browser (default /usr/bin/chromium)
// Exits 0 when every step passed; otherwise prints the failed step and exits 1.

import { chromium } from "playwright-core";
import crypto from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const api = process.env.SLUICE_API;
const email = process.env.SLUICE_EMAIL;
const temporary = process.env.SLUICE_TEMP_PASSWORD;
const chosen = process.env.SLUICE_NEW_PASSWORD;
const out = process.env.SLUICE_OUT;
const edge = process.env.SLUICE_EDGE;
const mfaEmail = process.env.SLUICE_MFA_EMAIL;
const mfaPassword = process.env.SLUICE_MFA_PASSWORD;
const mfaAccess = process.env.SLUICE_MFA_ACCESS_TOKEN;
const mfaSecret = process.env.SLUICE_MFA_SECRET;
for (const [k, v] of Object.entries({ api, email, temporary, chosen, out, edge, mfaEmail, mfaPassword, mfaAccess, mfaSecret })) {
  if (!v) {
    console.error(`missing setting: ${k}`);
    process.exit(2);
  }
}
mkdirSync(out, { recursive: true });

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

/** RFC 6238 (SHA-1, 6 digits, 30 s) of a base32 secret, `offset` steps from now. */
function totp(secret, offset = 0) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of secret.replace(/=+$/, "")) bits += alphabet.indexOf(c).toString(2).padStart(5, "0");
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(Date.now() / 1000 / 30) + offset));
  const digest = crypto.createHmac("sha1", key).update(counter).digest();
  const o = digest[19] & 0x0f;
  return String((digest.readUInt32BE(o) & 0x7fffffff) % 1_000_000).padStart(6, "0");
}

/** A public Cognito operation at the edge, as the console's own requests are made. */
async function cognito(op, body) {
  const r = await fetch(`${edge}/`, {
    method: "POST",
    headers: { "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": `AWSCognitoIdentityProviderService.${op}` },
    body: JSON.stringify(body),
  });
  const json = await r.json();
  if (!r.ok) throw new Error(`${op}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

const files = [
  { name: "first.txt", mimeType: "text/plain", buffer: Buffer.from("hello from the console\n") },
  {
    name: "second.txt",
    mimeType: "text/plain",
    // Large enough for the progress bar to move through several events.
    buffer: Buffer.from("abcdefghijklmnopqrstuvwxyz\n".repeat(40_000)),
  },
];

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
let step = "start";
const errors = [];
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
  // Failed requests are recorded with what they were; the browser's own console line for
  // them ("Failed to load resource") says less.
  const failures = [];
  page.on("response", async (r) => {
    if (r.status() >= 400) {
      const target = r.request().headers()["x-amz-target"] || "";
      failures.push(`${r.status()} ${r.request().method()} ${r.url()} ${target}`);
    }
  });
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) {
      errors.push(`console error: ${m.text()}`);
    }
  });

  step = "open the console (/ redirects to /console/)";
  await page.goto(`${api}/`);
  check(page.url().endsWith("/console/"), `at ${page.url()}`);
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  await page.screenshot({ path: join(out, "01-sign-in.png") });

  step = "a wrong password is refused with Cognito's message";
  await page.getByLabel("Email", { exact: true }).fill(email);
  await page.getByLabel("Password", { exact: true }).fill("not-the-password-1A!");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("Incorrect username or password.").waitFor();

  step = "sign in with the temporary password: NEW_PASSWORD_REQUIRED";
  await page.getByLabel("Password", { exact: true }).fill(temporary);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Choose a new password" }).waitFor();
  await page.getByLabel("New password", { exact: true }).fill(chosen);
  await page.getByLabel("New password, again").fill(chosen + "x");
  await page.getByRole("button", { name: "Set password and sign in" }).click();
  await page.getByText("The two passwords differ.").waitFor();
  await page.getByLabel("New password, again").fill(chosen);
  await page.getByRole("button", { name: "Set password and sign in" }).click();
  await page.getByRole("heading", { name: "My uploads" }).waitFor();
  await page.getByText(email).waitFor();
  await page.locator("#live", { hasText: "live" }).waitFor();
  await page.screenshot({ path: join(out, "02-signed-in.png") });

  step = "upload two files at once; each gets a progress bar";
  await page.locator("#file-input").setInputFiles(files);
  check((await page.locator("#transfers progress").count()) === 2, "a progress bar per file");
  for (const f of files) {
    await page.locator("#upload-rows tr", { hasText: f.name }).waitFor();
  }

  step = "both reach processed through the live view";
  for (const f of files) {
    await page
      .locator(`#upload-rows tr[data-status="processed"]`, { hasText: f.name })
      .waitFor({ timeout: 60_000 });
  }
  await page.screenshot({ path: join(out, "03-processed.png"), fullPage: true });

  step = "download the result of the first file and compare its bytes";
  const row = page.locator("#upload-rows tr", { hasText: files[0].name });
  const [result] = await Promise.all([
    page.waitForEvent("download"),
    row.getByRole("button", { name: `Result: ${files[0].name}` }).click(),
  ]);
  const resultPath = join(out, `result-${files[0].name}`);
  await result.saveAs(resultPath);
  const expected = files[0].buffer.toString().toUpperCase();
  check(readFileSync(resultPath, "utf8") === expected, "the result is the uppercased file");
  check(result.suggestedFilename() === files[0].name, `download named ${result.suggestedFilename()}`);

  step = "download the original of the second file and compare its bytes";
  const row2 = page.locator("#upload-rows tr", { hasText: files[1].name });
  const [original] = await Promise.all([
    page.waitForEvent("download"),
    row2.getByRole("button", { name: `Original: ${files[1].name}` }).click(),
  ]);
  const originalPath = join(out, `original-${files[1].name}`);
  await original.saveAs(originalPath);
  check(readFileSync(originalPath).equals(files[1].buffer), "the original comes back byte for byte");

  step = "a reload keeps the session (tab storage) and lists the uploads";
  await page.reload();
  await page.locator(`#upload-rows tr[data-status="processed"]`, { hasText: files[1].name }).waitFor();
  check((await page.locator("#upload-rows tr").count()) === 2, "two rows after a reload");

  step = "operators (admin group) see the operations page";
  const groups = await page.evaluate(() => {
    const s = JSON.parse(sessionStorage.getItem("sluice.session"));
    const part = s.idToken.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)))["cognito:groups"];
  });
  check(Array.isArray(groups) && groups.includes("admin"), `the ID token's groups: ${JSON.stringify(groups)}`);
  await page.getByRole("link", { name: "Operations" }).click();
  await page.getByRole("heading", { name: "Operations" }).waitFor();
  await page.locator("#stream-rows tr", { hasText: "uploads-stream" }).waitFor();
  for (const c of ["records", "bytes", "age"]) {
    await page.locator(`#chart-${c} [role="img"] svg`).waitFor();
  }
  check(
    (await page.locator('#chart-records [role="img"]').getAttribute("aria-label")).startsWith("Incoming records per second"),
    "the records chart is described for screen readers",
  );
  await page.locator("#upload-counts", { hasText: "2 processed" }).waitFor();
  const mappingRow = page.locator("#mapping-rows tr").first();
  await mappingRow.waitFor();
  await page.locator("#user-rows tr", { hasText: email }).filter({ hasText: "admin" }).waitFor();
  await mappingRow.getByRole("button").click();
  await page.locator("#log-view").waitFor();
  await page.locator("#log-lines", { hasText: /\S/ }).waitFor();
  await page.locator("#new-user-email").fill("colleague@example.com");
  await page.locator("#new-user-password").fill("Temp0rary!");
  await page.getByRole("button", { name: "Create user" }).click();
  await page.locator("#user-rows tr", { hasText: "colleague@example.com" }).filter({ hasText: "FORCE_CHANGE_PASSWORD" }).waitFor();
  await page.getByRole("button", { name: "Make operator: colleague@example.com" }).click();
  await page.locator("#user-rows tr", { hasText: "colleague@example.com" }).filter({ hasText: "admin" }).waitFor();
  await page.locator("#key-description").fill("made in the browser");
  await page.getByRole("button", { name: "Create key" }).click();
  await page.locator("#new-key-text", { hasText: "aws_secret_access_key = " }).waitFor();
  const keyRow = page.locator("#key-rows tr", { hasText: "made in the browser" });
  await keyRow.waitFor();
  await page.screenshot({ path: join(out, "06-operations.png"), fullPage: true });
  await keyRow.getByRole("button").click();
  await keyRow.waitFor({ state: "detached" });
  await page.getByRole("button", { name: "Close logs" }).click();
  await page.getByRole("link", { name: "My uploads" }).click();
  await page.getByRole("heading", { name: "My uploads" }).waitFor();

  step = "keyboard: the file picker and sign-out are reachable with Tab";
  await page.locator("#main").focus();
  const reached = new Set();
  for (let i = 0; i < 30; i += 1) {
    await page.keyboard.press("Tab");
    reached.add(await page.evaluate(() => document.activeElement && (document.activeElement.id || document.activeElement.textContent)));
  }
  check(reached.has("file-input"), `file input reachable (${[...reached].join(", ")})`);

  step = "on a phone-sized screen the list stacks";
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(out, "04-phone.png"), fullPage: true });
  const headHidden = await page.evaluate(() => {
    const r = document.querySelector("#uploads thead").getBoundingClientRect();
    return r.right < 0;
  });
  check(headHidden, "the table head is moved out of view on a narrow screen");
  await page.setViewportSize({ width: 1200, height: 900 });

  step = "sign out ends the session";
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  await page.reload();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  await page.screenshot({ path: join(out, "05-signed-out.png") });

  step = "sign in again with the new password";
  await page.getByLabel("Email", { exact: true }).fill(email);
  await page.getByLabel("Password", { exact: true }).fill(chosen);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "My uploads" }).waitFor();
  await page.locator("#upload-rows tr", { hasText: files[0].name }).waitFor();

  step = "a user with a software token: verify and enable it (Cognito's API)";
  await cognito("VerifySoftwareToken", { AccessToken: mfaAccess, UserCode: totp(mfaSecret) });
  await cognito("SetUserMFAPreference", {
    AccessToken: mfaAccess,
    SoftwareTokenMfaSettings: { Enabled: true, PreferredMfa: true },
  });

  step = "that user signs in through the console's code step";
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  await page.getByLabel("Email", { exact: true }).fill(mfaEmail);
  await page.getByLabel("Password", { exact: true }).fill(mfaPassword);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Enter your code" }).waitFor();
  await page.getByText("Enter the code your authenticator app shows.").waitFor();
  await page.screenshot({ path: join(out, "07-mfa-code.png") });
  const good = totp(mfaSecret, 1);
  await page.getByLabel("Code", { exact: true }).fill(good === "000000" ? "111111" : "000000");
  await page.getByRole("button", { name: "Verify and sign in" }).click();
  await page.locator("#mfa-code-error", { hasText: "Invalid code" }).waitFor();
  await page.getByLabel("Code", { exact: true }).fill(good);
  await page.getByRole("button", { name: "Verify and sign in" }).click();
  await page.getByRole("heading", { name: "My uploads" }).waitFor();
  await page.getByText(mfaEmail).waitFor();

  step = "no script errors, and no failed request but the wrong password and the wrong code";
  check(errors.length === 0, errors.join("\n"));
  const allowed = (f) =>
    f.startsWith("400 POST") && (f.endsWith(".InitiateAuth") || f.endsWith(".RespondToAuthChallenge"));
  const unexpected = failures.filter((f) => !allowed(f));
  check(failures.length === 2 && unexpected.length === 0, failures.join("\n"));
  console.log("console: every step passed");
} catch (e) {
  console.error(`console test failed at step "${step}": ${e.message}`);
  if (errors.length) console.error(errors.join("\n"));
  try {
    const pages = browser.contexts().flatMap((c) => c.pages());
    if (pages[0]) await pages[0].screenshot({ path: join(out, "failure.png"), fullPage: true });
  } catch (_) {
    /* the screenshot is a courtesy */
  }
  await browser.close();
  process.exit(1);
}
await browser.close();
