#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target under fuzz/corpus/<target>/.

The seeds are small real requests: what the aws CLI, the AWS SDKs (the Java SDK v2 and the
KCL send Kinesis requests in CBOR), curl and browsers send, in each target's input format
(see the target's doc comment). `@name@` placeholders stand for values a target knows only
at run time (a pool's client id, a live shard iterator, a multipart upload id).

Run it from anywhere: `python3 fuzz/make_corpus.py`. It rewrites the corpus directories it
owns; the fuzzer's own findings go elsewhere (scripts/fuzz keeps them out of the clone).
"""

import base64
import hashlib
import json
import os
import shutil
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def js(v):
    return json.dumps(v, separators=(",", ":"))


# --- CBOR (RFC 8949), as much as Kinesis' CBOR 1.1 uses ---------------------------------

class Tag:
    def __init__(self, tag, value):
        self.tag, self.value = tag, value


def _head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for extra, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | extra]) + struct.pack(fmt, n)
    raise ValueError(n)


def cbor(v):
    if v is None:
        return b"\xf6"
    if v is True:
        return b"\xf5"
    if v is False:
        return b"\xf4"
    if isinstance(v, Tag):
        return _head(6, v.tag) + cbor(v.value)
    if isinstance(v, int):
        return _head(0, v) if v >= 0 else _head(1, -1 - v)
    if isinstance(v, float):
        return b"\xfb" + struct.pack(">d", v)
    if isinstance(v, bytes):
        return _head(2, len(v)) + v
    if isinstance(v, str):
        b = v.encode()
        return _head(3, len(b)) + b
    if isinstance(v, list):
        return _head(4, len(v)) + b"".join(cbor(x) for x in v)
    if isinstance(v, dict):
        return _head(5, len(v)) + b"".join(cbor(k) + cbor(x) for k, x in v.items())
    raise TypeError(v)


# --- sigv4_authorization ----------------------------------------------------------------

SIG = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"


def auth(key, date, region, service, headers):
    return (f"AWS4-HMAC-SHA256 Credential={key}/{date}/{region}/{service}/aws4_request, "
            f"SignedHeaders={';'.join(headers)}, Signature={SIG}")


def sigv4():
    t = "sigv4_authorization"
    write(t, "kinesis-put-record", auth("AKIAIOSFODNN7EXAMPLE", "20261124", "us-east-2", "kinesis",
                                        ["content-type", "host", "x-amz-date", "x-amz-target"]) + "\n"
          "POST /\n"
          "host: 127.0.0.1:4566\n"
          "x-amz-date: 20261124T010000Z\n"
          "x-amz-target: Kinesis_20131202.PutRecord\n"
          "content-type: application/x-amz-json-1.1\n"
          "user-agent: aws-cli/1.33.0 Python/3.11.2 Linux/6.1.0 botocore/1.34.0\n"
          "\n"
          '{"StreamName":"fuzz","Data":"aGVsbG8=","PartitionKey":"k"}')
    write(t, "s3-put-object", auth("AKIAIOSFODNN7EXAMPLE", "20261124", "us-east-2", "s3",
                                   ["content-md5", "content-type", "host", "x-amz-content-sha256",
                                    "x-amz-date", "x-amz-meta-owner"]) + "\n"
          "PUT /fuzz/uploads/My%20Photo%20%282%29.jpg\n"
          "host: 127.0.0.1:4566\n"
          "x-amz-date: 20261124T010000Z\n"
          "x-amz-content-sha256: UNSIGNED-PAYLOAD\n"
          "content-md5: XUFAKrxLKna5cZ2REBfFkg==\n"
          "content-type: image/jpeg\n"
          "x-amz-meta-owner:   Ann   Lee  \n"
          "\n"
          "hello")
    write(t, "s3-list-objects-v2", auth("AKIAIOSFODNN7EXAMPLE", "20261124", "us-east-2", "s3",
                                        ["host", "x-amz-content-sha256", "x-amz-date"]) + "\n"
          "GET /fuzz?list-type=2&prefix=a%2Fb&delimiter=%2F&encoding-type=url&max-keys=2"
          "&continuation-token=dXBsb2Fkcy9h\n"
          "host: 127.0.0.1:4566\n"
          "x-amz-date: 20261124T010000Z\n"
          "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
          "\n")
    write(t, "iam-documented-example", auth("AKIDEXAMPLE", "20150830", "us-east-1", "iam",
                                            ["content-type", "host", "x-amz-date"]) + "\n"
          "GET /\n"
          "content-type: application/x-www-form-urlencoded; charset=utf-8\n"
          "host: iam.amazonaws.com\n"
          "x-amz-date: 20150830T123600Z\n"
          "\n")
    write(t, "cognito-admin-signed", auth("AKIAIOSFODNN7EXAMPLE", "20261124", "us-east-2",
                                          "cognito-idp", ["content-type", "host", "x-amz-date",
                                                          "x-amz-security-token", "x-amz-target"])
          + "\n"
          "POST /?a=1&a=0&b=&c\n"
          "host: 127.0.0.1:4566\n"
          "x-amz-date: 20261124T235959Z\n"
          "x-amz-security-token: FwoGZXIvYXdzE%2F%2F\n"
          "x-amz-target: AWSCognitoIdentityProviderService.AdminGetUser\n"
          "content-type: application/x-amz-json-1.1\n"
          "\n"
          '{"UserPoolId":"us-east-2_AbCdEfGhI","Username":"me@example.com"}')


# --- kinesis_json / kinesis_cbor --------------------------------------------------------

# sluice's sequence numbers: 2^120 | shard index << 64 | counter (shard 1, record 2).
SEQ = str((1 << 120) | (1 << 64) | 2)


def kinesis_requests():
    """(file name, operation line, JSON model, CBOR model)."""
    hello = base64.b64encode(b"hello").decode()
    reqs = [
        ("create-stream", "CreateStream", {"StreamName": "orders", "ShardCount": 2}),
        ("create-stream-on-demand", "CreateStream",
         {"StreamName": "events", "StreamModeDetails": {"StreamMode": "ON_DEMAND"},
          "MaxRecordSizeInKiB": 2048, "Tags": {"team": "data"}}),
        ("put-record", "PutRecord",
         {"StreamName": "fuzz", "Data": hello, "PartitionKey": "user-1",
          "SequenceNumberForOrdering": SEQ}),
        ("put-records", "PutRecords",
         {"StreamARN": "@stream-arn@",
          "Records": [{"Data": hello, "PartitionKey": "a"},
                      {"Data": "", "PartitionKey": "b",
                       "ExplicitHashKey": "170141183460469231731687303715884105728"}]}),
        ("get-shard-iterator", "GetShardIterator",
         {"StreamName": "fuzz", "ShardId": "shardId-000000000001",
          "ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": SEQ}),
        ("get-shard-iterator-at-timestamp", "GetShardIterator",
         {"StreamName": "fuzz", "ShardId": "shardId-000000000000",
          "ShardIteratorType": "AT_TIMESTAMP", "Timestamp": 1796330000.5}),
        ("get-records", "GetRecords", {"ShardIterator": "@iterator@", "Limit": 10}),
        ("list-shards", "ListShards",
         {"StreamName": "fuzz", "ShardFilter": {"Type": "FROM_TIMESTAMP", "Timestamp": 1.7e9},
          "MaxResults": 1}),
        ("describe-stream-summary", "DescribeStreamSummary", {"StreamARN": "@stream-arn@"}),
        ("describe-stream", "DescribeStream",
         {"StreamName": "fuzz", "Limit": 1, "ExclusiveStartShardId": "shardId-000000000000"}),
        ("list-streams", "ListStreams", {"Limit": 5, "ExclusiveStartStreamName": "a"}),
        ("register-consumer", "RegisterStreamConsumer",
         {"StreamARN": "@stream-arn@", "ConsumerName": "app-2", "Tags": {"k": "v"}}),
        ("subscribe-to-shard", "SubscribeToShard",
         {"ConsumerARN": "@consumer@", "ShardId": "shardId-000000000001",
          "StartingPosition": {"Type": "AT_SEQUENCE_NUMBER", "SequenceNumber": SEQ}}),
        ("list-tags-for-consumer", "ListTagsForResource", {"ResourceARN": "@consumer@"}),
        ("add-tags", "AddTagsToStream", {"StreamName": "fuzz", "Tags": {"env": "test"}}),
        ("split-shard", "SplitShard",
         {"StreamName": "orders", "ShardToSplit": "shardId-000000000000",
          "NewStartingHashKey": "85070591730234615865843651857942052864"}),
        ("update-shard-count-scoped", "UpdateShardCount scoped",
         {"StreamName": "orders", "TargetShardCount": 4, "ScalingType": "UNIFORM_SCALING"}),
        ("put-record-scoped", "PutRecord scoped",
         {"StreamName": "fuzz", "Data": hello, "PartitionKey": "k"}),
        ("retention", "IncreaseStreamRetentionPeriod",
         {"StreamName": "orders", "RetentionPeriodHours": 48}),
    ]
    out = []
    for name, op, model in reqs:
        out.append((name, op, model))
    return out


def to_cbor_model(v, key=None):
    """The JSON model as the Java SDK encodes it: blobs as byte strings, timestamps tag 1."""
    if isinstance(v, dict):
        return {k: to_cbor_model(x, k) for k, x in v.items()}
    if isinstance(v, list):
        return [to_cbor_model(x, key) for x in v]
    if key == "Data" and isinstance(v, str):
        return base64.b64decode(v)
    if key in ("Timestamp", "ApproximateArrivalTimestamp", "StreamCreationTimestamp"):
        return Tag(1, float(v))
    return v


def kinesis():
    for name, op, model in kinesis_requests():
        write("kinesis_json", name, op + "\n" + js(model))
        write("kinesis_cbor", name, op.encode() + b"\n" + cbor(to_cbor_model(model)))


# --- cognito_body -----------------------------------------------------------------------


# Seeds written as raw files: MFA, triggers, custom attributes, CUSTOM_AUTH, tags (session
# 19), domains, resource servers, OAuth client settings and identity providers.
COGNITO_RAW = [
    ('add-custom-attributes', 'AddCustomAttributes',
     '{"UserPoolId":"@pool@","CustomAttributes":[{"Name":"tier","AttributeDataType":"Number","NumberAttributeConstraints":{"MinValue":"1","MaxValue":"3"}},{"Name":"secret","AttributeDataType":"String","DeveloperOnlyAttribute":true,"Mutable":false}]}'),
    ('associate-software-token', 'AssociateSoftwareToken anonymous',
     '{"AccessToken":"@access@"}'),
    ('create-identity-provider-oidc', 'CreateIdentityProvider',
     '{"UserPoolId":"@pool@","ProviderName":"Upstream","ProviderType":"OIDC","ProviderDetails":{"client_id":"c","client_secret":"s","authorize_scopes":"openid email","oidc_issuer":"https://idp.example.com","attributes_request_method":"GET","authorize_url":"https://idp.example.com/authorize","token_url":"https://idp.example.com/token","attributes_url":"https://idp.example.com/userinfo","jwks_uri":"https://idp.example.com/jwks"},"AttributeMapping":{"email":"email"},"IdpIdentifiers":["example.com"]}'),
    ('create-identity-provider-saml', 'CreateIdentityProvider',
     '{"UserPoolId":"@pool@","ProviderName":"Corp","ProviderType":"SAML","ProviderDetails":{"MetadataURL":"https://corp.example/metadata"}}'),
    ('create-oauth-client', 'CreateUserPoolClient',
     '{"UserPoolId":"@pool@","ClientName":"web","GenerateSecret":true,"AllowedOAuthFlowsUserPoolClient":true,"AllowedOAuthFlows":["code","implicit"],"AllowedOAuthScopes":["openid","email","https://api.example.com/read"],"CallbackURLs":["https://app.example/cb","http://localhost:3000/cb","myapp://cb"],"LogoutURLs":["https://app.example/bye"],"DefaultRedirectURI":"https://app.example/cb","SupportedIdentityProviders":["COGNITO"]}'),
    ('create-resource-server', 'CreateResourceServer',
     '{"UserPoolId":"@pool@","Identifier":"https://api.example.com","Name":"api","Scopes":[{"ScopeName":"read","ScopeDescription":"read"}]}'),
    ('create-user-pool-domain', 'CreateUserPoolDomain',
     '{"UserPoolId":"@pool@","Domain":"fuzz-domain"}'),
    ('describe-user-pool-domain', 'DescribeUserPoolDomain',
     '{"Domain":"fuzz-domain"}'),
    ('get-identity-provider-by-identifier', 'GetIdentityProviderByIdentifier',
     '{"UserPoolId":"@pool@","IdpIdentifier":"example.com"}'),
    ('initiate-custom-auth', 'InitiateAuth anonymous',
     '{"ClientId":"@client@","AuthFlow":"CUSTOM_AUTH","AuthParameters":{"USERNAME":"@user@"},"ClientMetadata":{"k":"v"}}'),
    ('list-identity-providers', 'ListIdentityProviders',
     '{"UserPoolId":"@pool@","MaxResults":5}'),
    ('list-resource-servers', 'ListResourceServers',
     '{"UserPoolId":"@pool@","MaxResults":2}'),
    ('respond-select-mfa-type', 'RespondToAuthChallenge anonymous',
     '{"ClientId":"@client@","ChallengeName":"SELECT_MFA_TYPE","Session":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","ChallengeResponses":{"USERNAME":"@user@","ANSWER":"EMAIL_OTP"}}'),
    ('set-user-mfa-preference', 'SetUserMFAPreference anonymous',
     '{"AccessToken":"@access@","SoftwareTokenMfaSettings":{"Enabled":true,"PreferredMfa":true},"SMSMfaSettings":{"Enabled":false},"EmailMfaSettings":{"Enabled":true}}'),
    ('set-user-pool-mfa-config', 'SetUserPoolMfaConfig',
     '{"UserPoolId":"@pool@","MfaConfiguration":"OPTIONAL","SoftwareTokenMfaConfiguration":{"Enabled":true},"SmsMfaConfiguration":{"SmsAuthenticationMessage":"{####}"},"EmailMfaConfiguration":{"Message":"{####}","Subject":"Code"}}'),
    ('tag-resource', 'TagResource',
     '{"ResourceArn":"arn:aws:cognito-idp:us-east-2:000000000000:userpool/@pool@","Tags":{"team":"data"}}'),
    ('update-user-pool-triggers', 'UpdateUserPool',
     '{"UserPoolId":"@pool@","LambdaConfig":{"PreSignUp":"arn:aws:lambda:us-east-2:000000000000:function:f","PreTokenGenerationConfig":{"LambdaVersion":"V2_0","LambdaArn":"arn:aws:lambda:us-east-2:000000000000:function:f"}},"AccountRecoverySetting":{"RecoveryMechanisms":[{"Priority":1,"Name":"verified_email"}]}}'),
    ('verify-software-token', 'VerifySoftwareToken anonymous',
     '{"AccessToken":"@access@","UserCode":"123456","FriendlyDeviceName":"phone"}'),
]

def cognito():
    t = "cognito_body"
    reqs = [
        ("sign-up", "SignUp anonymous",
         {"ClientId": "@client@", "Username": "new@example.com", "Password": "Passw0rd!",
          "UserAttributes": [{"Name": "email", "Value": "new@example.com"},
                             {"Name": "name", "Value": "New"}]}),
        ("confirm-sign-up", "ConfirmSignUp anonymous",
         {"ClientId": "@client@", "Username": "new@example.com", "ConfirmationCode": "123456"}),
        ("initiate-auth-password", "InitiateAuth anonymous",
         {"AuthFlow": "USER_PASSWORD_AUTH", "ClientId": "@client@",
          "AuthParameters": {"USERNAME": "@user@", "PASSWORD": "Passw0rd!"}}),
        ("initiate-auth-refresh", "InitiateAuth anonymous",
         {"AuthFlow": "REFRESH_TOKEN_AUTH", "ClientId": "@client@",
          "AuthParameters": {"REFRESH_TOKEN": "@refresh@"}}),
        ("initiate-auth-srp", "InitiateAuth anonymous",
         {"AuthFlow": "USER_SRP_AUTH", "ClientId": "@client@",
          "AuthParameters": {"USERNAME": "@user@", "SRP_A": "a3f1" * 192}}),
        ("respond-password-verifier", "RespondToAuthChallenge anonymous",
         {"ChallengeName": "PASSWORD_VERIFIER", "ClientId": "@client@",
          "ChallengeResponses": {"USERNAME": "@user@", "PASSWORD_CLAIM_SECRET_BLOCK": "c2Vzc2lvbg==",
                                 "PASSWORD_CLAIM_SIGNATURE": "c2lnbmF0dXJl",
                                 "TIMESTAMP": "Thu Dec 3 20:48:37 UTC 2026"}}),
        ("respond-new-password", "RespondToAuthChallenge anonymous",
         {"ChallengeName": "NEW_PASSWORD_REQUIRED", "ClientId": "@client@", "Session": "AYABeH",
          "ChallengeResponses": {"USERNAME": "@user@", "NEW_PASSWORD": "N3w-passw0rd",
                                 "userAttributes.name": "Me"}}),
        ("get-user", "GetUser anonymous", {"AccessToken": "@access@"}),
        ("update-user-attributes", "UpdateUserAttributes anonymous",
         {"AccessToken": "@access@", "UserAttributes": [{"Name": "custom:team", "Value": "a"}]}),
        ("forgot-password", "ForgotPassword anonymous",
         {"ClientId": "@client@", "Username": "@user@"}),
        ("admin-create-user", "AdminCreateUser",
         {"UserPoolId": "@pool@", "Username": "admin-made@example.com",
          "TemporaryPassword": "Tmp-passw0rd", "MessageAction": "SUPPRESS",
          "UserAttributes": [{"Name": "email", "Value": "admin-made@example.com"},
                             {"Name": "email_verified", "Value": "true"}]}),
        ("admin-get-user", "AdminGetUser", {"UserPoolId": "@pool@", "Username": "@user@"}),
        ("list-users-filter", "ListUsers",
         {"UserPoolId": "@pool@", "Filter": "email ^= \"fuzz\"", "Limit": 5,
          "AttributesToGet": ["email"]}),
        ("create-user-pool", "CreateUserPool",
         {"PoolName": "second", "UsernameAttributes": ["email"],
          "Policies": {"PasswordPolicy": {"MinimumLength": 12, "RequireSymbols": True}},
          "AutoVerifiedAttributes": ["email"]}),
        ("create-user-pool-client", "CreateUserPoolClient",
         {"UserPoolId": "@pool@", "ClientName": "web", "GenerateSecret": True,
          "ExplicitAuthFlows": ["ALLOW_USER_SRP_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
          "AccessTokenValidity": 5, "TokenValidityUnits": {"AccessToken": "minutes"}}),
        ("describe-user-pool-anonymous", "DescribeUserPool anonymous", {"UserPoolId": "@pool@"}),
        ("list-user-pools", "ListUserPools", {"MaxResults": 10}),
        ("admin-initiate-auth", "AdminInitiateAuth",
         {"AuthFlow": "ADMIN_USER_PASSWORD_AUTH", "ClientId": "@client@", "UserPoolId": "@pool@",
          "AuthParameters": {"USERNAME": "@user@", "PASSWORD": "wrong",
                             "SECRET_HASH": "bm90IGEgaGFzaA=="}}),
    ]
    for name, op, body in reqs:
        write(t, name, op + "\n" + js(body))


# --- jwt --------------------------------------------------------------------------------
    for name, line, raw in COGNITO_RAW:
        write(t, name, line + "\n" + raw)


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt():
    t = "jwt"
    iss = "http://edge.test/us-east-2_fuzzpool0"
    client = "fuzzclient0000000000000000"
    # Valid for the target's fixed clock (1.8e9) and the real one until 2096.
    now = 1_800_000_000
    exp = 4_000_000_000
    id_claims = {"sub": "5b7f0d6e-1c2d-4c3b-9a8e-2f1e0d9c8b7a", "email_verified": True,
                 "iss": iss, "cognito:username": "5b7f0d6e-1c2d-4c3b-9a8e-2f1e0d9c8b7a",
                 "origin_jti": "o-1", "aud": client, "event_id": "e-1", "token_use": "id",
                 "auth_time": now - 60, "exp": exp, "iat": 1_700_000_000, "jti": "j-1",
                 "email": "me@example.com", "custom:team": "a"}
    access_claims = {"sub": "5b7f0d6e", "iss": iss, "client_id": client, "origin_jti": "o-1",
                     "event_id": "e-1", "token_use": "access",
                     "scope": "aws.cognito.signin.user.admin", "auth_time": now - 60,
                     "exp": exp, "iat": 1_700_000_000, "jti": "j-2", "username": "5b7f0d6e"}
    header = {"kid": "@kid@", "alg": "RS256"}
    write(t, "signed-id-token", "signed\n" + js(header) + "\n" + js(id_claims))
    write(t, "signed-access-token", "signed\n" + js(header) + "\n" + js(access_claims))
    write(t, "signed-aud-list-nbf", "signed\n" + js({"alg": "RS256", "typ": "JWT", "kid": "@kid@"})
          + "\n" + js(dict(id_claims, aud=["other", client], nbf=now - 10)))
    write(t, "signed-revoked-user", "signed\n" + js(header) + "\n"
          + js(dict(access_claims, sub="@revoked-sub@")))
    write(t, "signed-crit", "signed\n" + js(dict(header, crit=["exp"])) + "\n" + js(id_claims))
    write(t, "signed-far-future-exp", "signed\n" + js(header) + "\n"
          + js(dict(id_claims, exp=9223372036854775807)))
    # Tokens as attackers send them: alg none, HS256, a foreign kid (the signature is junk).
    none = b64u(js({"alg": "none"}).encode()) + "." + b64u(js(id_claims).encode()) + "."
    write(t, "alg-none", none)
    hs = (b64u(js({"alg": "HS256", "kid": "k"}).encode()) + "." + b64u(js(id_claims).encode())
          + "." + b64u(hashlib.sha256(b"x").digest()))
    write(t, "alg-hs256", hs)
    rs = (b64u(js({"alg": "RS256", "kid": "not-ours"}).encode()) + "."
          + b64u(js(access_claims).encode()) + "." + b64u(bytes(256)))
    write(t, "foreign-kid", rs)


# --- s3_request -------------------------------------------------------------------------

def md5b64(b):
    return base64.b64encode(hashlib.md5(b).digest()).decode()


def s3_request():
    t = "s3_request"
    ua = "user-agent: aws-cli/1.33.0 md/Botocore#1.34.0 ua/2.0 os/linux#6.1.0 cfg/retry-mode#legacy\n"

    def req(name, line, headers=(), body=b""):
        if isinstance(body, str):
            body = body.encode()
        head = line + "\n" + ua + "".join(f"{n}: {v}\n" for n, v in headers) + "\n"
        write(t, name, head.encode() + body)

    req("put-object", "PUT /fuzz/uploads/photo.jpg",
        [("content-type", "image/jpeg"), ("content-md5", md5b64(b"\xff\xd8\xff\xe0jpeg")),
         ("x-amz-meta-camera", "x100")], b"\xff\xd8\xff\xe0jpeg")
    req("put-object-if-none-match", "PUT /fuzz/notes/a%20b.txt",
        [("if-none-match", "*"), ("content-type", "text/plain")], "notes")
    req("get-object-range", "GET /fuzz/hello.txt",
        [("range", "bytes=0-4"), ("if-none-match", '"0000"')])
    req("head-object-part", "HEAD /fuzz/hello.txt?partNumber=1",
        [("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")])
    req("list-objects-v2", "GET /fuzz?list-type=2&prefix=&delimiter=%2F&max-keys=2&encoding-type=url")
    req("list-objects-v2-token", "GET /fuzz?list-type=2&continuation-token=aGVsbG8udHh0&start-after=a")
    req("list-objects-v1", "GET /fuzz?marker=a&prefix=h&max-keys=1")
    delete = ('<?xml version="1.0" encoding="UTF-8"?>\n'
              '<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>hello.txt</Key>'
              '</Object><Object><Key>missing &amp; gone.txt</Key></Object><Quiet>false</Quiet>'
              '</Delete>')
    req("delete-objects", "POST /fuzz?delete",
        [("content-md5", md5b64(delete.encode())), ("content-type", "application/xml")], delete)
    complete = ('<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                '<Part><ETag>"@etag1@"</ETag><PartNumber>1</PartNumber></Part>'
                '</CompleteMultipartUpload>')
    req("complete-multipart-upload", "POST /fuzz/big?uploadId=@upload@", [], complete)
    req("upload-part", "PUT /fuzz/big?partNumber=2&uploadId=@upload@",
        [("content-md5", md5b64(b"part two"))], "part two")
    req("upload-part-copy", "PUT /fuzz/big?partNumber=3&uploadId=@upload@",
        [("x-amz-copy-source", "/fuzz/hello.txt"), ("x-amz-copy-source-range", "bytes=0-3"),
         ("x-amz-copy-source-if-match", '"a"')])
    req("copy-object", "PUT /fuzz/copy.txt",
        [("x-amz-copy-source", "fuzz/hello.txt?versionId=null"),
         ("x-amz-metadata-directive", "REPLACE"), ("content-type", "text/plain")])
    req("create-multipart-upload", "POST /fuzz/uploads/video.mp4?uploads",
        [("content-type", "video/mp4")])
    req("list-multipart-uploads", "GET /fuzz?uploads&prefix=b&max-uploads=1")
    req("list-parts", "GET /fuzz/big?uploadId=@upload@&max-parts=1&part-number-marker=0")
    req("abort-multipart-upload", "DELETE /fuzz/big?uploadId=@upload@")
    req("create-bucket", "PUT /second",
        [], '<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            '<LocationConstraint>us-east-2</LocationConstraint></CreateBucketConfiguration>')
    req("list-buckets", "GET /")
    req("get-bucket-location", "GET /fuzz?location")
    req("kinesis-list-streams", "POST /",
        [("x-amz-target", "Kinesis_20131202.ListStreams"),
         ("content-type", "application/x-amz-json-1.1")], "{}")


# --- s3_values --------------------------------------------------------------------------

def s3_values():
    t = "s3_values"
    complete = ('<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                '<Part><ChecksumCRC32>AAAAAA==</ChecksumCRC32><ETag>"9b2cf535f27731c974343645a3985328"</ETag>'
                '<PartNumber>1</PartNumber></Part><Part><ETag>"0f343b0931126a20f133d67c2b018a3b"'
                '</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>')
    delete = ('<Delete><Object><Key>a/b.txt</Key><VersionId>null</VersionId></Object>'
              '<Quiet>true</Quiet></Delete>')
    write(t, "copy-range", "bytes=0-1048575\n" + complete)
    write(t, "content-md5", "XUFAKrxLKna5cZ2REBfFkg==\n" + delete)
    write(t, "range-suffix", "bytes=-500\n")
    write(t, "range-open", "bytes=9500-\n")
    write(t, "copy-source", "/fuzz/photos/2026/a%20b.jpg?versionId=3HL4kqtJlcpXroDTDmJ\n")
    write(t, "copy-source-access-point",
          "arn:aws:s3:us-west-2:123456789012:accesspoint/my-ap/object/a.txt\n")
    write(t, "part-number", "3\n")
    write(t, "fold", "photos/2026/a.jpg\tphotos/\t/\n")
    write(t, "token", "dXBsb2Fkcy9hLnR4dA\n")


# --- upload_body, upload_filename -------------------------------------------------------

def uploads():
    t = "upload_body"
    write(t, "json-seed", "application/json\n\n\n"
          + js({"filename": "hello.txt", "content": "Hello from the seed"}))
    write(t, "json-defaults", "application/json; charset=utf-8\n\n\n{}")
    write(t, "json-nfd-name", "application/json\n\n\n"
          + json.dumps({"filename": "re\u0301sume\u0301.txt", "content": "cv"}))
    write(t, "raw", b"application/octet-stream\nfilename=report%202026.pdf\n\n%PDF-1.7\n\x00\x01\xff")
    boundary = "------------------------d74496d66958873e"
    form = (f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="photo.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
            "\xff\xd8\xff\xe0 jpeg bytes\r\n"
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="filename"\r\n\r\n'
            "holiday.jpg\r\n"
            f"--{boundary}--\r\n")
    write(t, "form-curl", f"multipart/form-data; boundary={boundary}\n\n7\n".encode()
          + form.encode("latin-1"))
    boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
    form = (f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="notes.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n"
            "line one\r\nline two\r\n"
            f"--{boundary}--\r\n")
    write(t, "form-browser", f"multipart/form-data; boundary={boundary}\n\n\n" + form)

    t = "upload_filename"
    for name, value in [
        ("ascii", "hello.txt"),
        ("nfd", "re\u0301sume\u0301.pdf"),
        ("reserved-device", "com1.log"),
        ("dots", "a..b"),
        ("bidi-override", "invoice\u202etxt.exe"),
        ("cjk", "日本語のファイル名.txt"),
        ("long", "x" * 251 + ".txt"),
        ("edge-space", " lead and trail "),
    ]:
        write(t, name, value)


# --- hosted_request ---------------------------------------------------------------------

def hosted():
    t = "hosted_request"
    p = "/@pool@"
    form = "Content-Type: application/x-www-form-urlencoded\n"
    authorize = ("response_type=code&client_id=@client@&redirect_uri=https%3A%2F%2Fapp.example%2Fcb"
                 "&scope=openid+email&state=xyz&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
                 "&code_challenge_method=S256&nonce=n1")
    reqs = [
        ("authorize", f"GET {p}/oauth2/authorize?{authorize}\n\n"),
        ("authorize-signed-in", f"GET {p}/oauth2/authorize?{authorize}\nCookie: sluice-login=@login@\n\n"),
        ("authorize-implicit", f"GET {p}/oauth2/authorize?response_type=token&client_id=@client@"
                               "&redirect_uri=https%3A%2F%2Fapp.example%2Fcb&state=s\nCookie: sluice-login=@login@\n\n"),
        ("authorize-bad-redirect", f"GET {p}/oauth2/authorize?response_type=code&client_id=@client@"
                                   "&redirect_uri=https%3A%2F%2Fevil.example%2F\n\n"),
        ("login-page", f"GET {p}/login?{authorize}\n\n"),
        ("login-post", f"POST {p}/login\n{form}Cookie: XSRF-TOKEN=0123456789abcdef0123456789abcdef\n\n"
                       f"_csrf=0123456789abcdef0123456789abcdef&{authorize}&username=@user@&password=Passw0rd%21"),
        ("login-wrong", f"POST {p}/login\n{form}Cookie: XSRF-TOKEN=0123456789abcdef0123456789abcdef\n\n"
                        f"_csrf=0123456789abcdef0123456789abcdef&{authorize}&username=@user@&password=nope"),
        ("challenge", f"POST {p}/login/challenge\n{form}Cookie: XSRF-TOKEN=0123456789abcdef0123456789abcdef\n\n"
                      f"_csrf=0123456789abcdef0123456789abcdef&{authorize}&session=AYAB&username=@user@"
                      "&challenge=NEW_PASSWORD_REQUIRED&new_password=N3w-Passw0rd&confirm_password=N3w-Passw0rd"),
        ("signup", f"POST {p}/signup\n{form}Cookie: XSRF-TOKEN=0123456789abcdef0123456789abcdef\n\n"
                   f"_csrf=0123456789abcdef0123456789abcdef&{authorize}&username=new&email=new%40example.com&password=Passw0rd%21"),
        ("forgot", f"POST {p}/forgotPassword\n{form}Cookie: XSRF-TOKEN=0123456789abcdef0123456789abcdef\n\n"
                   f"_csrf=0123456789abcdef0123456789abcdef&{authorize}&username=@user@"),
        ("token-code", f"POST {p}/oauth2/token\n{form}Authorization: Basic @basic@\n\n"
                       "grant_type=authorization_code&code=@code@&redirect_uri=https%3A%2F%2Fapp.example%2Fcb"
                       "&code_verifier=@verifier@"),
        ("token-code-post", f"POST {p}/oauth2/token\n{form}\n"
                            "grant_type=authorization_code&code=@code@&redirect_uri=https%3A%2F%2Fapp.example%2Fcb"
                            "&code_verifier=@verifier@&client_id=@client@&client_secret=@secret@"),
        ("token-machine", f"POST {p}/oauth2/token\n{form}\n"
                          "grant_type=client_credentials&scope=api%2Fread&client_id=@machine@&client_secret=@machine_secret@"),
        ("token-refresh", f"POST {p}/oauth2/token\n{form}Authorization: Basic @basic@\n\n"
                          "grant_type=refresh_token&refresh_token=abc"),
        ("userinfo", f"GET {p}/oauth2/userInfo\nAuthorization: Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln\n\n"),
        ("revoke", f"POST {p}/oauth2/revoke\n{form}Authorization: Basic @basic@\n\ntoken=abc"),
        ("logout", f"GET {p}/logout?client_id=@client@&logout_uri=https%3A%2F%2Fapp.example%2Fbye\n"
                   "Cookie: sluice-login=@login@\n\n"),
        ("preflight", f"OPTIONS {p}/oauth2/token\nOrigin: https://app.example\n\n"),
        ("idp-response", f"GET {p}/oauth2/idpresponse?code=abc&state=def\n\n"),
        ("idp-response-error", f"GET {p}/oauth2/idpresponse?error=access_denied&state=def\n\n"),
        ("authorize-provider", f"GET {p}/oauth2/authorize?{authorize}&identity_provider=Nobody\n\n"),
    ]
    for name, req in reqs:
        write(t, name, req)


def main():
    for target in ["sigv4_authorization", "kinesis_json", "kinesis_cbor", "cognito_body", "jwt",
                   "s3_request", "s3_values", "upload_body", "upload_filename", "hosted_request"]:
        shutil.rmtree(os.path.join(ROOT, target), ignore_errors=True)
    sigv4()
    kinesis()
    cognito()
    jwt()
    s3_request()
    s3_values()
    uploads()
    hosted()


if __name__ == "__main__":
    main()
