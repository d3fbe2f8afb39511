"""The hosted UI and the OAuth 2.0 / OpenID Connect endpoints of a user pool, driven by a
real OpenID Connect client library (Authlib, over requests) through the hosted pages with
form posts, on pools of the tests' own: domains and resource servers (boto3), the
authorization code flow with PKCE, refresh, userInfo, revocation, client credentials,
logout, and the errors RFC 6749 / RFC 7636 specify."""

import html.parser
import secrets
import urllib.parse

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.jwk import KeySet

from conftest import fails, unique

PASSWORD = "Passw0rd-OAuth!"
CALLBACK = "http://localhost:8765/callback"
LOGOUT = "http://localhost:8765/signed-out"


class Forms(html.parser.HTMLParser):
    """The forms of a hosted page: action and the inputs' names and values."""

    def __init__(self):
        super().__init__()
        self.forms = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action"), "fields": {}})
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value") or ""


def form_of(page):
    p = Forms()
    p.feed(page.text)
    assert p.forms, page.text
    return p.forms[0]


def submit(browser, base, page, **values):
    """Posts a hosted page's form as a browser would: its hidden fields, with `values`."""
    f = form_of(page)
    fields = {k: v for k, v in f["fields"].items() if k not in values}
    fields.update(values)
    return browser.post(urllib.parse.urljoin(base, f["action"]), data=fields,
                        allow_redirects=False)


def follow_to_callback(browser, base, response):
    """Follows the hosted UI's redirects until one leaves for the app's callback."""
    for _ in range(5):
        assert response.status_code == 302, (response.status_code, response.text)
        location = urllib.parse.urljoin(base, response.headers["Location"])
        if location.startswith(CALLBACK):
            return location
        response = browser.get(location, allow_redirects=False)
    raise AssertionError("no redirect to the callback")


def query_of(url):
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


@pytest.fixture()
def oauth_pool(idp, edge):
    pool = idp.create_user_pool(PoolName=unique("oauth"))["UserPool"]["Id"]
    domain = unique("login")
    idp.create_user_pool_domain(UserPoolId=pool, Domain=domain)
    idp.create_resource_server(
        UserPoolId=pool, Identifier="https://api.example.com", Name="api",
        Scopes=[{"ScopeName": "read", "ScopeDescription": "read things"},
                {"ScopeName": "write", "ScopeDescription": "write things"}])
    app = idp.create_user_pool_client(
        UserPoolId=pool, ClientName="web", GenerateSecret=True,
        AllowedOAuthFlowsUserPoolClient=True, AllowedOAuthFlows=["code", "implicit"],
        AllowedOAuthScopes=["openid", "email", "profile", "https://api.example.com/read"],
        CallbackURLs=[CALLBACK], LogoutURLs=[LOGOUT], SupportedIdentityProviders=["COGNITO"],
    )["UserPoolClient"]
    idp.admin_create_user(UserPoolId=pool, Username="alice", MessageAction="SUPPRESS",
                          UserAttributes=[{"Name": "email", "Value": "alice@example.com"},
                                          {"Name": "email_verified", "Value": "true"},
                                          {"Name": "name", "Value": "Alice"}])
    idp.admin_set_user_password(UserPoolId=pool, Username="alice", Password=PASSWORD,
                                Permanent=True)
    issuer = f"{edge}/{pool}"
    discovery = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=10).json()
    yield {"pool": pool, "domain": domain, "client": app, "issuer": issuer,
           "discovery": discovery}
    idp.delete_user_pool(UserPoolId=pool)


def oidc(p, **kw):
    c = p["client"]
    return OAuth2Session(c["ClientId"], c["ClientSecret"], redirect_uri=CALLBACK,
                         scope="openid email profile", code_challenge_method="S256", **kw)


def sign_in_for_code(p, browser, session=None, scope="openid email profile"):
    """The authorization code flow through the hosted pages; returns (session, callback
    URL, verifier, nonce)."""
    session = session or oidc(p)
    verifier = secrets.token_urlsafe(48)
    nonce = secrets.token_urlsafe(12)
    url, state = session.create_authorization_url(
        p["discovery"]["authorization_endpoint"], code_verifier=verifier, nonce=nonce,
        scope=scope)
    r = browser.get(url, allow_redirects=False)
    assert r.status_code == 302, r.text
    if r.headers["Location"].startswith(CALLBACK):
        # The browser is signed in already: no page.
        callback = r.headers["Location"]
    else:
        login = browser.get(urllib.parse.urljoin(p["issuer"], r.headers["Location"]))
        assert login.status_code == 200 and "Sign in" in login.text
        r = submit(browser, p["issuer"], login, username="alice", password=PASSWORD)
        callback = follow_to_callback(browser, p["issuer"], r)
    assert query_of(callback)["state"] == state
    return session, callback, verifier, nonce


def keys(p):
    return KeySet.import_key_set(requests.get(p["discovery"]["jwks_uri"], timeout=10).json())


def claims_of(p, token):
    """A token's claims, its signature verified with the pool's published keys."""
    return jwt.decode(token, keys(p)).claims


def verify_id_token(p, id_token, nonce):
    claims = claims_of(p, id_token)
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": p["issuer"]},
        aud={"essential": True, "value": p["client"]["ClientId"]},
        nonce={"essential": True, "value": nonce},
        exp={"essential": True},
    ).validate(claims)
    return claims


def test_domains_resource_servers_and_client_settings(idp, oauth_pool):
    p = oauth_pool
    d = idp.describe_user_pool_domain(Domain=p["domain"])["DomainDescription"]
    assert d["UserPoolId"] == p["pool"] and d["Status"] == "ACTIVE"
    assert idp.describe_user_pool_domain(Domain=unique("nobody"))["DomainDescription"] == {}
    assert idp.describe_user_pool(UserPoolId=p["pool"])["UserPool"]["Domain"] == p["domain"]
    fails("InvalidParameterException", idp.create_user_pool_domain,
          UserPoolId=p["pool"], Domain=unique("second"))
    fails("InvalidParameterException", idp.create_user_pool_domain,
          UserPoolId=p["pool"], Domain="Not_Valid")

    rs = idp.describe_resource_server(UserPoolId=p["pool"], Identifier="https://api.example.com")
    assert [s["ScopeName"] for s in rs["ResourceServer"]["Scopes"]] == ["read", "write"]
    idp.create_resource_server(UserPoolId=p["pool"], Identifier="second", Name="second",
                               Scopes=[])
    page = idp.list_resource_servers(UserPoolId=p["pool"], MaxResults=1)
    assert len(page["ResourceServers"]) == 1 and "NextToken" in page
    rest = idp.list_resource_servers(UserPoolId=p["pool"], MaxResults=1,
                                     NextToken=page["NextToken"])
    assert rest["ResourceServers"][0]["Identifier"] != page["ResourceServers"][0]["Identifier"]
    fails("InvalidParameterException", idp.create_resource_server, UserPoolId=p["pool"],
          Identifier="second", Name="again", Scopes=[])
    idp.update_resource_server(UserPoolId=p["pool"], Identifier="second", Name="renamed",
                               Scopes=[{"ScopeName": "x", "ScopeDescription": "x"}])
    idp.delete_resource_server(UserPoolId=p["pool"], Identifier="second")
    fails("ResourceNotFoundException", idp.describe_resource_server, UserPoolId=p["pool"],
          Identifier="second")

    got = idp.describe_user_pool_client(UserPoolId=p["pool"],
                                        ClientId=p["client"]["ClientId"])["UserPoolClient"]
    assert got["CallbackURLs"] == [CALLBACK] and got["AllowedOAuthFlowsUserPoolClient"] is True
    assert "https://api.example.com/read" in got["AllowedOAuthScopes"]
    # Settings Cognito refuses.
    for bad in (
        {"AllowedOAuthScopes": ["https://api.example.com/nope"]},
        {"CallbackURLs": ["http://app.example.com/cb"]},
        {"AllowedOAuthFlows": ["client_credentials"], "AllowedOAuthScopes": ["https://api.example.com/read"]},
        {"DefaultRedirectURI": "https://elsewhere.example.com/"},
    ):
        settings = {"AllowedOAuthFlowsUserPoolClient": True, "AllowedOAuthFlows": ["code"],
                    "AllowedOAuthScopes": ["openid"], "CallbackURLs": [CALLBACK], **bad}
        fails("InvalidParameterException", idp.create_user_pool_client, UserPoolId=p["pool"],
              ClientName="bad", **settings)


def test_authorization_code_with_pkce(oauth_pool, idp):
    p = oauth_pool
    browser = requests.Session()
    session, callback, verifier, nonce = sign_in_for_code(p, browser)
    token = session.fetch_token(p["discovery"]["token_endpoint"],
                                authorization_response=callback, code_verifier=verifier)
    assert token["token_type"] == "Bearer" and token["expires_in"] > 0
    claims = verify_id_token(p, token["id_token"], nonce)
    assert claims["cognito:username"] == "alice" and claims["email"] == "alice@example.com"
    assert claims["token_use"] == "id" and "at_hash" in claims
    access = claims_of(p, token["access_token"])
    assert sorted(access["scope"].split()) == ["email", "openid", "profile"]
    assert access["client_id"] == p["client"]["ClientId"]

    info = session.get(p["discovery"]["userinfo_endpoint"]).json()
    assert info["sub"] == claims["sub"] and info["email"] == "alice@example.com"
    assert info["name"] == "Alice" and info["username"] == "alice"
    # An access token without aws.cognito.signin.user.admin may not call the user API.
    with pytest.raises(Exception) as e:
        idp.get_user(AccessToken=token["access_token"])
    assert "NotAuthorized" in str(e.value)

    refreshed = session.refresh_token(p["discovery"]["token_endpoint"],
                                      refresh_token=token["refresh_token"])
    assert refreshed["access_token"] != token["access_token"]
    assert "id_token" in refreshed and "refresh_token" not in refreshed or \
        refreshed["refresh_token"] == token["refresh_token"]

    session.revoke_token(p["discovery"]["revocation_endpoint"], token["refresh_token"],
                         token_type_hint="refresh_token")
    r = requests.post(p["discovery"]["token_endpoint"], timeout=10,
                      auth=(p["client"]["ClientId"], p["client"]["ClientSecret"]),
                      data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # The revoked sign-in's access token is refused too.
    r = requests.get(p["discovery"]["userinfo_endpoint"], timeout=10,
                     headers={"Authorization": f"Bearer {token['access_token']}"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"


def token_request(p, **form):
    return requests.post(p["discovery"]["token_endpoint"], timeout=10,
                         auth=(p["client"]["ClientId"], p["client"]["ClientSecret"]), data=form)


def test_code_errors_as_rfc_6749_and_7636_say(oauth_pool):
    p = oauth_pool
    browser = requests.Session()
    _, callback, verifier, _ = sign_in_for_code(p, browser)
    code = query_of(callback)["code"]
    # A wrong verifier spends the code: it cannot be tried again, even with the right one.
    r = token_request(p, grant_type="authorization_code", code=code, redirect_uri=CALLBACK,
                      code_verifier=verifier[:-1] + ("a" if verifier[-1] != "a" else "b"))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    r = token_request(p, grant_type="authorization_code", code=code, redirect_uri=CALLBACK,
                      code_verifier=verifier)
    assert r.json()["error"] == "invalid_grant"

    # Missing verifier; then another code with a redirect_uri that differs.
    _, callback, verifier, _ = sign_in_for_code(p, browser)
    r = token_request(p, grant_type="authorization_code", code=query_of(callback)["code"],
                      redirect_uri=CALLBACK)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    _, callback, verifier, _ = sign_in_for_code(p, browser)
    r = token_request(p, grant_type="authorization_code", code=query_of(callback)["code"],
                      redirect_uri=CALLBACK + "/other", code_verifier=verifier)
    assert r.json()["error"] == "invalid_grant"

    # A good exchange, then the same code again.
    _, callback, verifier, _ = sign_in_for_code(p, browser)
    form = dict(grant_type="authorization_code", code=query_of(callback)["code"],
                redirect_uri=CALLBACK, code_verifier=verifier)
    assert token_request(p, **form).status_code == 200
    r = token_request(p, **form)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"

    # Client authentication.
    r = requests.post(p["discovery"]["token_endpoint"], timeout=10,
                      auth=(p["client"]["ClientId"], "wrong"), data=form)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    assert "WWW-Authenticate" in r.headers
    r = token_request(p, grant_type="password", username="alice", password=PASSWORD)
    assert r.json()["error"] == "unsupported_grant_type"
    r = token_request(p, grant_type="client_credentials")
    assert r.json()["error"] == "unauthorized_client"

    # The authorization endpoint: a redirect URI not registered is never redirected to.
    authorize = p["discovery"]["authorization_endpoint"]
    base = {"client_id": p["client"]["ClientId"], "response_type": "code",
            "redirect_uri": CALLBACK, "state": "s1"}
    r = requests.get(authorize, params={**base, "redirect_uri": "http://localhost:1/evil"},
                     allow_redirects=False, timeout=10)
    assert r.status_code == 400 and "Location" not in r.headers
    r = requests.get(authorize, params={**base, "client_id": "nosuchclient"},
                     allow_redirects=False, timeout=10)
    assert r.status_code == 400 and "Location" not in r.headers
    for params, error in (
        ({"scope": "openid https://api.example.com/write"}, "invalid_scope"),
        ({"response_type": "id_token"}, "unsupported_response_type"),
        ({"code_challenge": "short", "code_challenge_method": "S256"}, "invalid_request"),
        ({"code_challenge": "x" * 43, "code_challenge_method": "S512"}, "invalid_request"),
        ({"prompt": "none"}, "login_required"),
    ):
        r = requests.get(authorize, params={**base, **params}, allow_redirects=False, timeout=10)
        assert r.status_code == 302, (params, r.text)
        q = query_of(r.headers["Location"])
        assert r.headers["Location"].startswith(CALLBACK)
        assert q["error"] == error and q["state"] == "s1", (params, q)


def test_signed_in_browser_logout_and_implicit(oauth_pool):
    p = oauth_pool
    browser = requests.Session()
    sign_in_for_code(p, browser)
    # Signed in: the next authorization answers at once, without the sign-in page.
    authorize = p["discovery"]["authorization_endpoint"]
    params = {"client_id": p["client"]["ClientId"], "response_type": "token",
              "redirect_uri": CALLBACK, "scope": "openid email", "state": "imp", "nonce": "n1"}
    r = browser.get(authorize, params=params, allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].startswith(CALLBACK + "#")
    fragment = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(r.headers["Location"]).fragment))
    assert fragment["state"] == "imp" and fragment["token_type"] == "Bearer"
    assert "refresh_token" not in fragment
    verify_id_token(p, fragment["id_token"], "n1")

    # Logout: only to a registered URL; afterwards the sign-in page is back.
    logout = p["discovery"]["end_session_endpoint"]
    r = browser.get(logout, params={"client_id": p["client"]["ClientId"],
                                    "logout_uri": "http://localhost:1/elsewhere"},
                    allow_redirects=False)
    assert r.status_code == 400
    r = browser.get(logout, params={"client_id": p["client"]["ClientId"], "logout_uri": LOGOUT},
                    allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == LOGOUT
    r = browser.get(authorize, params={**params, "response_type": "code"}, allow_redirects=False)
    assert r.status_code == 302 and "/login?" in r.headers["Location"]


def test_client_credentials_with_resource_server_scopes(idp, oauth_pool):
    p = oauth_pool
    machine = idp.create_user_pool_client(
        UserPoolId=p["pool"], ClientName="machine", GenerateSecret=True,
        AllowedOAuthFlowsUserPoolClient=True, AllowedOAuthFlows=["client_credentials"],
        AllowedOAuthScopes=["https://api.example.com/read", "https://api.example.com/write"],
    )["UserPoolClient"]
    session = OAuth2Session(machine["ClientId"], machine["ClientSecret"],
                            scope="https://api.example.com/read")
    token = session.fetch_token(p["discovery"]["token_endpoint"], grant_type="client_credentials")
    assert "id_token" not in token and "refresh_token" not in token
    claims = claims_of(p, token["access_token"])
    assert claims["sub"] == machine["ClientId"] and claims["client_id"] == machine["ClientId"]
    assert claims["scope"] == "https://api.example.com/read" and claims["token_use"] == "access"
    # No scope asked: every scope the client has.
    r = requests.post(p["discovery"]["token_endpoint"], timeout=10,
                      auth=(machine["ClientId"], machine["ClientSecret"]),
                      data={"grant_type": "client_credentials"})
    assert sorted(claims_of(p, r.json()["access_token"])["scope"].split()) == [
        "https://api.example.com/read", "https://api.example.com/write"]
    r = requests.post(p["discovery"]["token_endpoint"], timeout=10,
                      auth=(machine["ClientId"], machine["ClientSecret"]),
                      data={"grant_type": "client_credentials", "scope": "openid"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    # client_secret_post works too.
    r = requests.post(p["discovery"]["token_endpoint"], timeout=10,
                      data={"grant_type": "client_credentials", "client_id": machine["ClientId"],
                            "client_secret": machine["ClientSecret"]})
    assert r.status_code == 200, r.text
    r = requests.get(p["discovery"]["userinfo_endpoint"], timeout=10,
                     headers={"Authorization": f"Bearer {token['access_token']}"})
    assert r.status_code in (401, 403)


def test_new_password_and_wrong_password_on_the_hosted_pages(idp, oauth_pool):
    p = oauth_pool
    idp.admin_create_user(UserPoolId=p["pool"], Username="bob", TemporaryPassword="Temp0rary-Pw!",
                          MessageAction="SUPPRESS")
    browser = requests.Session()
    session = oidc(p)
    verifier = secrets.token_urlsafe(48)
    url, _ = session.create_authorization_url(p["discovery"]["authorization_endpoint"],
                                              code_verifier=verifier)
    login_url = urllib.parse.urljoin(
        p["issuer"], browser.get(url, allow_redirects=False).headers["Location"])
    login = browser.get(login_url)
    wrong = submit(browser, p["issuer"], login, username="bob", password="nope-Nope-1")
    assert wrong.status_code == 400 and "Incorrect username or password" in wrong.text
    # A form without its anti-forgery token is refused.
    r = requests.post(urllib.parse.urljoin(p["issuer"], form_of(login)["action"]),
                      data={**form_of(login)["fields"], "username": "bob",
                            "password": "Temp0rary-Pw!"}, allow_redirects=False, timeout=10)
    assert r.status_code == 403
    step = submit(browser, p["issuer"], login, username="bob", password="Temp0rary-Pw!")
    assert step.status_code == 200 and "new_password" in step.text
    mismatch = submit(browser, p["issuer"], step, new_password="N3w-Password!",
                      confirm_password="different")
    assert mismatch.status_code == 400
    done = submit(browser, p["issuer"], step, new_password="N3w-Password!",
                  confirm_password="N3w-Password!")
    callback = follow_to_callback(browser, p["issuer"], done)
    token = session.fetch_token(p["discovery"]["token_endpoint"],
                                authorization_response=callback, code_verifier=verifier)
    assert "access_token" in token
    assert idp.admin_get_user(UserPoolId=p["pool"], Username="bob")["UserStatus"] == "CONFIRMED"


def test_sign_up_on_the_hosted_pages(idp, oauth_pool):
    p = oauth_pool
    browser = requests.Session()
    params = {"client_id": p["client"]["ClientId"], "response_type": "code",
              "redirect_uri": CALLBACK}
    signup = browser.get(f"{p['issuer']}/signup", params=params)
    assert signup.status_code == 200 and "Sign up" in signup.text
    r = submit(browser, p["issuer"], signup, username="carol", email="carol@example.com",
               password=PASSWORD)
    assert r.status_code == 200 and "Confirm your account" in r.text
    assert idp.admin_get_user(UserPoolId=p["pool"], Username="carol")["UserStatus"] == "UNCONFIRMED"
    bad = submit(browser, p["issuer"], r, code="000000")
    assert bad.status_code == 400
    taken = submit(browser, p["issuer"], browser.get(f"{p['issuer']}/signup", params=params),
                   username="carol", email="carol@example.com", password=PASSWORD)
    assert taken.status_code == 400 and "exists" in taken.text


def test_no_domain_no_endpoints(idp, edge):
    pool = idp.create_user_pool(PoolName=unique("nodomain"))["UserPool"]["Id"]
    try:
        doc = requests.get(f"{edge}/{pool}/.well-known/openid-configuration", timeout=10).json()
        assert "authorization_endpoint" not in doc
        r = requests.post(f"{edge}/{pool}/oauth2/token", data={"grant_type": "client_credentials"},
                          timeout=10)
        assert r.status_code == 404 and r.json()["error"] == "invalid_request"
    finally:
        idp.delete_user_pool(UserPoolId=pool)


def test_identity_providers_and_oidc_federation_with_a_second_pool(idp, edge):
    """Pool B federates with pool A (another sluice pool, as its OpenID Connect issuer):
    B's authorization goes on to A's hosted sign-in page, A's answer comes back to B's
    /oauth2/idpresponse, and B signs the user in as Upstream_<A's sub>."""
    down = idp.create_user_pool(PoolName=unique("down"))["UserPool"]["Id"]
    up = idp.create_user_pool(PoolName=unique("up"))["UserPool"]["Id"]
    try:
        for pool in (down, up):
            idp.create_user_pool_domain(UserPoolId=pool, Domain=unique("fed"))
        up_issuer, down_issuer = f"{edge}/{up}", f"{edge}/{down}"
        upstream = idp.create_user_pool_client(
            UserPoolId=up, ClientName="for-down", GenerateSecret=True,
            AllowedOAuthFlowsUserPoolClient=True, AllowedOAuthFlows=["code"],
            AllowedOAuthScopes=["openid", "email"],
            CallbackURLs=[f"{down_issuer}/oauth2/idpresponse"],
        )["UserPoolClient"]
        idp.admin_create_user(UserPoolId=up, Username="erin", MessageAction="SUPPRESS",
                              UserAttributes=[{"Name": "email", "Value": "erin@example.com"},
                                              {"Name": "email_verified", "Value": "true"}])
        idp.admin_set_user_password(UserPoolId=up, Username="erin", Password=PASSWORD,
                                    Permanent=True)
        erin_sub = next(a["Value"] for a in idp.admin_get_user(UserPoolId=up, Username="erin")
                        ["UserAttributes"] if a["Name"] == "sub")

        details = {"client_id": upstream["ClientId"], "client_secret": upstream["ClientSecret"],
                   "authorize_scopes": "openid email", "oidc_issuer": up_issuer,
                   "attributes_request_method": "GET"}
        created = idp.create_identity_provider(
            UserPoolId=down, ProviderName="Upstream", ProviderType="OIDC",
            ProviderDetails=details, AttributeMapping={"email": "email"},
            IdpIdentifiers=["upstream.example"])["IdentityProvider"]
        # The provider's endpoints come from its discovery document.
        assert created["ProviderDetails"]["authorize_url"] == f"{up_issuer}/oauth2/authorize"
        assert created["ProviderDetails"]["jwks_uri"] == f"{up_issuer}/.well-known/jwks.json"
        fails("DuplicateProviderException", idp.create_identity_provider, UserPoolId=down,
              ProviderName="Upstream", ProviderType="OIDC", ProviderDetails=details)
        fails("InvalidParameterException", idp.create_identity_provider, UserPoolId=down,
              ProviderName="NoOpenid", ProviderType="OIDC",
              ProviderDetails={**details, "authorize_scopes": "email"})
        idp.create_identity_provider(UserPoolId=down, ProviderName="Corp", ProviderType="SAML",
                                     ProviderDetails={"MetadataURL": "https://corp.example/md"})
        names = [p["ProviderName"] for p in
                 idp.list_identity_providers(UserPoolId=down, MaxResults=10)["Providers"]]
        assert names == ["Corp", "Upstream"]
        by_id = idp.get_identity_provider_by_identifier(UserPoolId=down,
                                                        IdpIdentifier="upstream.example")
        assert by_id["IdentityProvider"]["ProviderName"] == "Upstream"
        idp.delete_identity_provider(UserPoolId=down, ProviderName="Corp")
        fails("ResourceNotFoundException", idp.describe_identity_provider, UserPoolId=down,
              ProviderName="Corp")
        fails("InvalidParameterException", idp.create_user_pool_client, UserPoolId=down,
              ClientName="x", SupportedIdentityProviders=["Nobody"])

        app = idp.create_user_pool_client(
            UserPoolId=down, ClientName="app", GenerateSecret=True,
            AllowedOAuthFlowsUserPoolClient=True, AllowedOAuthFlows=["code"],
            AllowedOAuthScopes=["openid", "email"], CallbackURLs=[CALLBACK],
            SupportedIdentityProviders=["COGNITO", "Upstream"],
        )["UserPoolClient"]
        p = {"client": app, "issuer": down_issuer,
             "discovery": requests.get(f"{down_issuer}/.well-known/openid-configuration",
                                       timeout=10).json()}
        browser = requests.Session()
        session = oidc(p)
        verifier = secrets.token_urlsafe(48)
        url, state = session.create_authorization_url(
            p["discovery"]["authorization_endpoint"], code_verifier=verifier, nonce="fed-1",
            scope="openid email")
        # B's sign-in page offers the provider.
        r = browser.get(url, allow_redirects=False)
        login = browser.get(urllib.parse.urljoin(down_issuer, r.headers["Location"]))
        assert "Sign in with Upstream" in login.text
        # With identity_provider, B sends the browser to A.
        r = browser.get(url + "&identity_provider=Upstream", allow_redirects=False)
        assert r.status_code == 302 and r.headers["Location"].startswith(f"{up_issuer}/oauth2/authorize")
        r = browser.get(r.headers["Location"], allow_redirects=False)
        a_login = browser.get(urllib.parse.urljoin(up_issuer, r.headers["Location"]))
        r = submit(browser, up_issuer, a_login, username="erin", password=PASSWORD)
        assert r.status_code == 302 and "/oauth2/idpresponse?" in r.headers["Location"]
        r = browser.get(r.headers["Location"], allow_redirects=False)
        callback = follow_to_callback(browser, down_issuer, r)
        assert query_of(callback)["state"] == state
        token = session.fetch_token(p["discovery"]["token_endpoint"],
                                    authorization_response=callback, code_verifier=verifier)
        claims = verify_id_token(p, token["id_token"], "fed-1")
        assert claims["cognito:username"] == f"Upstream_{erin_sub}"
        assert claims["email"] == "erin@example.com"
        assert claims["identities"][0]["providerName"] == "Upstream"
        assert claims["identities"][0]["userId"] == erin_sub
        user = idp.admin_get_user(UserPoolId=down, Username=f"Upstream_{erin_sub}")
        assert user["UserStatus"] == "EXTERNAL_PROVIDER"
        # A provider's answer is used once.
        r = browser.get(f"{down_issuer}/oauth2/idpresponse", params={"code": "x", "state": "y"},
                        allow_redirects=False)
        assert r.status_code == 400
    finally:
        idp.delete_user_pool(UserPoolId=down)
        idp.delete_user_pool(UserPoolId=up)
