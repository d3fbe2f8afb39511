// Shared by the tests: the server's URLs and key come from the environment that
// crates/sluice/tests/clients.rs sets (see README.md beside this file).
import crypto from "node:crypto";

export function env(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run these tests through crates/sluice/tests/clients.rs`);
  }
  return value;
}

export const edge = () => env("SLUICE_TEST_EDGE_URL");
export const region = () => process.env.AWS_REGION || "us-east-2";

/** Client options with the endpoint given in code (the seed's handlers use none). */
export const clientConfig = (extra = {}) => ({
  endpoint: edge(),
  region: region(),
  credentials: {
    accessKeyId: env("AWS_ACCESS_KEY_ID"),
    secretAccessKey: env("AWS_SECRET_ACCESS_KEY"),
  },
  maxAttempts: 1,
  ...extra,
});

export const unique = (prefix) => `${prefix}-${crypto.randomUUID().slice(0, 12)}`;

/** Polls fn until it returns a truthy value; fails after a generous deadline. */
export async function eventually(fn, what, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// WORKAROUND for a sluice gap (remove once sluice accepts it): over HTTP/2 the SDK's
// host-header middleware replaces `host` with the `:authority` pseudo-header, so SigV4
// signs `:authority` (SignedHeaders=:authority;…), which AWS accepts and sluice's edge
// refuses with IncompleteSignatureException "the host header must be signed". This
// middleware puts `host` back before signing; the request still goes over h2c (Node
// derives `:authority` from the session). Set SLUICE_JS_STRICT_H2=1 to run without it.
const hostInsteadOfAuthority = (next) => async (args) => {
  const headers = args.request?.headers;
  if (headers && headers[":authority"] !== undefined) {
    headers.host = headers[":authority"];
    delete headers[":authority"];
  }
  return next(args);
};

const strictH2 = () => process.env.SLUICE_JS_STRICT_H2 === "1";

/** Adds the workaround to one client. */
export function signHostOverH2(client) {
  if (!strictH2() && !client.middlewareStack.identify().some((m) => m.startsWith("sluiceHostInsteadOfAuthority"))) {
    client.middlewareStack.addRelativeTo(hostInsteadOfAuthority, {
      relation: "after",
      toMiddleware: "hostHeaderMiddleware",
      name: "sluiceHostInsteadOfAuthority",
    });
  }
  return client;
}

/** Adds the workaround to every client of a class, including ones created in code that
 * must stay as written (the seed's handlers). */
export function signHostOverH2ForEvery(ClientClass) {
  const send = ClientClass.prototype.send;
  if (send.sluicePatched) return;
  const patched = function (...args) {
    signHostOverH2(this);
    return send.apply(this, args);
  };
  patched.sluicePatched = true;
  ClientClass.prototype.send = patched;
}
