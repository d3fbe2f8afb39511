// A user pool's hosted UI and OAuth 2.0 / OpenID Connect endpoints through openid-client
// (a certified OpenID Connect relying party library): discovery, the authorization code
// flow with PKCE through the hosted sign-in page (form posts, cookies kept by hand),
// ID token validation (issuer, audience, nonce, signature from the JWKS), userInfo,
// refresh, revocation and client credentials — on a pool made with the AWS SDK v3.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as oidc from "openid-client";
import {
  CognitoIdentityProviderClient,
  AdminCreateUserCommand,
  AdminSetUserPasswordCommand,
  CreateResourceServerCommand,
  CreateUserPoolClientCommand,
  CreateUserPoolCommand,
  CreateUserPoolDomainCommand,
  DeleteUserPoolCommand,
  DescribeUserPoolDomainCommand,
} from "@aws-sdk/client-cognito-identity-provider";
import { clientConfig, edge, unique } from "./lib.mjs";

const PASSWORD = "Passw0rd-JS-oidc!";
const CALLBACK = "http://localhost:8766/callback";
const idp = new CognitoIdentityProviderClient(clientConfig());

/** A browser's cookie jar, enough for the hosted pages (one path, no expiry). */
class Browser {
  constructor() {
    this.cookies = new Map();
  }
  async fetch(url, init = {}) {
    const headers = new Headers(init.headers);
    if (this.cookies.size) {
      headers.set("cookie", [...this.cookies].map(([k, v]) => `${k}=${v}`).join("; "));
    }
    const r = await fetch(url, { ...init, headers, redirect: "manual" });
    for (const c of r.headers.getSetCookie()) {
      const [pair] = c.split(";");
      const i = pair.indexOf("=");
      const [k, v] = [pair.slice(0, i), pair.slice(i + 1)];
      if (/Max-Age=0/i.test(c)) this.cookies.delete(k);
      else this.cookies.set(k, v);
    }
    return r;
  }
}

/** The first form of a page: its action and its inputs (name → value). */
function formOf(html) {
  const action = html.match(/<form[^>]*action="([^"]*)"/)[1].replaceAll("&amp;", "&");
  const fields = {};
  const form = html.slice(html.indexOf("<form"), html.indexOf("</form>"));
  for (const m of form.matchAll(/<input([^>]*)>/g)) {
    const name = m[1].match(/name="([^"]*)"/)?.[1];
    const value = m[1].match(/value="([^"]*)"/)?.[1] ?? "";
    if (name) fields[name] = value.replaceAll("&amp;", "&").replaceAll("&quot;", '"');
  }
  return { action, fields };
}

test("authorization code with PKCE, refresh, userInfo, revocation and client credentials", async () => {
  const pool = (await idp.send(new CreateUserPoolCommand({ PoolName: unique("js-oidc") })))
    .UserPool.Id;
  try {
    const domain = unique("js-login");
    await idp.send(new CreateUserPoolDomainCommand({ UserPoolId: pool, Domain: domain }));
    const described = await idp.send(new DescribeUserPoolDomainCommand({ Domain: domain }));
    assert.equal(described.DomainDescription.UserPoolId, pool);
    await idp.send(new CreateResourceServerCommand({
      UserPoolId: pool, Identifier: "orders", Name: "orders",
      Scopes: [{ ScopeName: "read", ScopeDescription: "read orders" }],
    }));
    const web = (await idp.send(new CreateUserPoolClientCommand({
      UserPoolId: pool, ClientName: "web", GenerateSecret: true,
      AllowedOAuthFlowsUserPoolClient: true, AllowedOAuthFlows: ["code"],
      AllowedOAuthScopes: ["openid", "email", "aws.cognito.signin.user.admin"],
      CallbackURLs: [CALLBACK],
    }))).UserPoolClient;
    await idp.send(new AdminCreateUserCommand({
      UserPoolId: pool, Username: "dana", MessageAction: "SUPPRESS",
      UserAttributes: [{ Name: "email", Value: "dana@example.com" },
        { Name: "email_verified", Value: "true" }],
    }));
    await idp.send(new AdminSetUserPasswordCommand({
      UserPoolId: pool, Username: "dana", Password: PASSWORD, Permanent: true,
    }));

    const issuer = new URL(`${edge()}/${pool}`);
    const config = await oidc.discovery(issuer, web.ClientId, web.ClientSecret, undefined, {
      execute: [oidc.allowInsecureRequests],
    });
    const verifier = oidc.randomPKCECodeVerifier();
    const state = oidc.randomState();
    const nonce = oidc.randomNonce();
    const url = oidc.buildAuthorizationUrl(config, {
      redirect_uri: CALLBACK,
      scope: "openid email aws.cognito.signin.user.admin",
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
      code_challenge_method: "S256",
      state,
      nonce,
    });

    // The browser: authorize → sign-in page → form post → back to the app with a code.
    const browser = new Browser();
    let r = await browser.fetch(url);
    assert.equal(r.status, 302);
    const login = await browser.fetch(new URL(r.headers.get("location"), issuer));
    const page = await login.text();
    assert.equal(login.status, 200, page);
    const form = formOf(page);
    r = await browser.fetch(new URL(form.action, issuer), {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ ...form.fields, username: "dana", password: PASSWORD }),
    });
    assert.equal(r.status, 302, await r.text());
    const callback = new URL(r.headers.get("location"));
    assert.equal(callback.origin + callback.pathname, CALLBACK);

    const tokens = await oidc.authorizationCodeGrant(config, callback, {
      pkceCodeVerifier: verifier,
      expectedState: state,
      expectedNonce: nonce,
      idTokenExpected: true,
    });
    const claims = tokens.claims();
    assert.equal(claims.iss, issuer.href);
    assert.equal(claims.aud, web.ClientId);
    assert.equal(claims.email, "dana@example.com");
    assert.equal(claims["cognito:username"], "dana");

    const info = await oidc.fetchUserInfo(config, tokens.access_token, claims.sub);
    assert.equal(info.email, "dana@example.com");
    assert.equal(info.username, "dana");

    // The code is spent.
    await assert.rejects(
      oidc.authorizationCodeGrant(config, callback, {
        pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce,
      }),
      (e) => e.error === "invalid_grant" || assert.fail(`${e.code} ${e.error} ${e.message}`),
    );

    const refreshed = await oidc.refreshTokenGrant(config, tokens.refresh_token);
    assert.ok(refreshed.access_token && refreshed.access_token !== tokens.access_token);
    assert.equal(refreshed.claims().sub, claims.sub);

    await oidc.tokenRevocation(config, tokens.refresh_token);
    await assert.rejects(
      oidc.refreshTokenGrant(config, tokens.refresh_token),
      (e) => e.error === "invalid_grant" || assert.fail(`${e.code} ${e.error} ${e.message}`),
    );

    // A machine client: client credentials with the resource server's scope.
    const machine = (await idp.send(new CreateUserPoolClientCommand({
      UserPoolId: pool, ClientName: "machine", GenerateSecret: true,
      AllowedOAuthFlowsUserPoolClient: true, AllowedOAuthFlows: ["client_credentials"],
      AllowedOAuthScopes: ["orders/read"],
    }))).UserPoolClient;
    const machineConfig = await oidc.discovery(
      issuer, machine.ClientId, machine.ClientSecret, undefined,
      { execute: [oidc.allowInsecureRequests] },
    );
    const m = await oidc.clientCredentialsGrant(machineConfig, { scope: "orders/read" });
    assert.equal(m.token_type.toLowerCase(), "bearer");
    const payload = JSON.parse(Buffer.from(m.access_token.split(".")[1], "base64url"));
    assert.equal(payload.sub, machine.ClientId);
    assert.equal(payload.scope, "orders/read");
  } finally {
    await idp.send(new DeleteUserPoolCommand({ UserPoolId: pool }));
  }
});
