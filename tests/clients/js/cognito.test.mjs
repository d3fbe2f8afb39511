// Cognito user pools through the AWS SDK for JavaScript v3
// (@aws-sdk/client-cognito-identity-provider): TOTP MFA enrolment and sign-in, a pool's
// attribute schema, and a PreTokenGeneration trigger on a function made with the Lambda
// client — on pools and functions of the test's own.
import { test } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import {
  CognitoIdentityProviderClient,
  AddCustomAttributesCommand,
  AdminCreateUserCommand,
  AdminGetUserCommand,
  AdminSetUserPasswordCommand,
  AssociateSoftwareTokenCommand,
  CreateUserPoolClientCommand,
  CreateUserPoolCommand,
  DeleteUserPoolCommand,
  DescribeUserPoolCommand,
  GetUserPoolMfaConfigCommand,
  InitiateAuthCommand,
  RespondToAuthChallengeCommand,
  SetUserMFAPreferenceCommand,
  SetUserPoolMfaConfigCommand,
  SignUpCommand,
  VerifySoftwareTokenCommand,
} from "@aws-sdk/client-cognito-identity-provider";
import {
  CreateFunctionCommand,
  DeleteFunctionCommand,
} from "@aws-sdk/client-lambda";
import { LambdaClient } from "@aws-sdk/client-lambda";
import { IAMClient, CreateRoleCommand, DeleteRoleCommand } from "@aws-sdk/client-iam";
import { clientConfig, unique, zip } from "./lib.mjs";

const PASSWORD = "Passw0rd-JS-idp!";
const idp = new CognitoIdentityProviderClient(clientConfig());

const rejectsWith = (p, name) =>
  assert.rejects(p, (e) => (e.name === name ? true : assert.fail(`${e.name}: ${e.message}`)));

/** RFC 6238 (SHA-1, 6 digits, 30 s), written here so the check shares nothing with the server. */
function totp(secret, offset = 0) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of secret.replace(/=+$/, "")) bits += alphabet.indexOf(c).toString(2).padStart(5, "0");
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const step = Math.floor(Date.now() / 1000 / 30) + offset;
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const digest = crypto.createHmac("sha1", key).update(counter).digest();
  const o = digest[19] & 0x0f;
  return String((digest.readUInt32BE(o) & 0x7fffffff) % 1_000_000).padStart(6, "0");
}

const claims = (jwt) => JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());

async function withPool(input, fn) {
  const { UserPool } = await idp.send(new CreateUserPoolCommand({ PoolName: unique("js-idp"), ...input }));
  try {
    const { UserPoolClient } = await idp.send(
      new CreateUserPoolClientCommand({
        UserPoolId: UserPool.Id,
        ClientName: "app",
        ExplicitAuthFlows: ["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
      }),
    );
    await fn(UserPool, UserPoolClient.ClientId);
  } finally {
    await idp.send(new DeleteUserPoolCommand({ UserPoolId: UserPool.Id }));
  }
}

async function makeUser(UserPoolId, Username, UserAttributes = []) {
  await idp.send(new AdminCreateUserCommand({ UserPoolId, Username, MessageAction: "SUPPRESS", UserAttributes }));
  await idp.send(new AdminSetUserPasswordCommand({ UserPoolId, Username, Password: PASSWORD, Permanent: true }));
}

const signIn = (ClientId, USERNAME) =>
  idp.send(
    new InitiateAuthCommand({ ClientId, AuthFlow: "USER_PASSWORD_AUTH", AuthParameters: { USERNAME, PASSWORD } }),
  );

test("TOTP MFA: enrol with an access token, then answer SOFTWARE_TOKEN_MFA", async () => {
  await withPool({}, async (pool, client) => {
    const config = await idp.send(
      new SetUserPoolMfaConfigCommand({
        UserPoolId: pool.Id,
        MfaConfiguration: "OPTIONAL",
        SoftwareTokenMfaConfiguration: { Enabled: true },
      }),
    );
    assert.equal(config.MfaConfiguration, "OPTIONAL");
    const got = await idp.send(new GetUserPoolMfaConfigCommand({ UserPoolId: pool.Id }));
    assert.deepEqual(got.SoftwareTokenMfaConfiguration, { Enabled: true });

    await makeUser(pool.Id, "erin");
    const { AuthenticationResult: first } = await signIn(client, "erin");
    const { SecretCode } = await idp.send(new AssociateSoftwareTokenCommand({ AccessToken: first.AccessToken }));
    await rejectsWith(
      idp.send(new VerifySoftwareTokenCommand({ AccessToken: first.AccessToken, UserCode: "000000" === totp(SecretCode) ? "111111" : "000000" })),
      "EnableSoftwareTokenMFAException",
    );
    const verified = await idp.send(
      new VerifySoftwareTokenCommand({ AccessToken: first.AccessToken, UserCode: totp(SecretCode) }),
    );
    assert.equal(verified.Status, "SUCCESS");
    await idp.send(
      new SetUserMFAPreferenceCommand({
        AccessToken: first.AccessToken,
        SoftwareTokenMfaSettings: { Enabled: true, PreferredMfa: true },
      }),
    );
    const user = await idp.send(new AdminGetUserCommand({ UserPoolId: pool.Id, Username: "erin" }));
    assert.deepEqual(user.UserMFASettingList, ["SOFTWARE_TOKEN_MFA"]);
    assert.equal(user.PreferredMfaSetting, "SOFTWARE_TOKEN_MFA");

    const challenge = await signIn(client, "erin");
    assert.equal(challenge.ChallengeName, "SOFTWARE_TOKEN_MFA");
    const code = totp(SecretCode, 1);
    const done = await idp.send(
      new RespondToAuthChallengeCommand({
        ClientId: client,
        ChallengeName: "SOFTWARE_TOKEN_MFA",
        Session: challenge.Session,
        ChallengeResponses: { USERNAME: "erin", SOFTWARE_TOKEN_MFA_CODE: code },
      }),
    );
    assert.ok(done.AuthenticationResult.IdToken);
    const again = await signIn(client, "erin");
    await rejectsWith(
      idp.send(
        new RespondToAuthChallengeCommand({
          ClientId: client,
          ChallengeName: "SOFTWARE_TOKEN_MFA",
          Session: again.Session,
          ChallengeResponses: { USERNAME: "erin", SOFTWARE_TOKEN_MFA_CODE: code },
        }),
      ),
      "CodeMismatchException",
    );
  });
});

test("a pool's schema: custom attributes declared, added and checked", async () => {
  await withPool(
    {
      Schema: [
        { Name: "tier", AttributeDataType: "Number", NumberAttributeConstraints: { MinValue: "1", MaxValue: "3" } },
      ],
    },
    async (pool, client) => {
      const described = await idp.send(new DescribeUserPoolCommand({ UserPoolId: pool.Id }));
      assert.ok(described.UserPool.SchemaAttributes.some((a) => a.Name === "custom:tier"));
      await rejectsWith(
        idp.send(
          new SignUpCommand({
            ClientId: client,
            Username: "fay",
            Password: PASSWORD,
            UserAttributes: [{ Name: "custom:tier", Value: "9" }],
          }),
        ),
        "InvalidParameterException",
      );
      await rejectsWith(
        idp.send(
          new SignUpCommand({
            ClientId: client,
            Username: "fay",
            Password: PASSWORD,
            UserAttributes: [{ Name: "custom:plan", Value: "pro" }],
          }),
        ),
        "InvalidParameterException",
      );
      await idp.send(
        new AddCustomAttributesCommand({ UserPoolId: pool.Id, CustomAttributes: [{ Name: "plan", AttributeDataType: "String" }] }),
      );
      const out = await idp.send(
        new SignUpCommand({
          ClientId: client,
          Username: "fay",
          Password: PASSWORD,
          UserAttributes: [
            { Name: "custom:tier", Value: "2" },
            { Name: "custom:plan", Value: "pro" },
          ],
        }),
      );
      assert.equal(out.UserConfirmed, false);
    },
  );
});

test("a PreTokenGeneration trigger on a function made with the Lambda client", async () => {
  const iam = new IAMClient(clientConfig());
  const lambda = new LambdaClient(clientConfig());
  const RoleName = unique("js-trigger-role");
  const { Role } = await iam.send(
    new CreateRoleCommand({
      RoleName,
      AssumeRolePolicyDocument: JSON.stringify({
        Version: "2012-10-17",
        Statement: [{ Effect: "Allow", Principal: { Service: "lambda.amazonaws.com" }, Action: "sts:AssumeRole" }],
      }),
    }),
  );
  const FunctionName = unique("js-trigger");
  const source = `exports.handler = async (event) => {
    event.response.claimsOverrideDetails = { claimsToAddOrOverride: { via: event.triggerSource } };
    return event;
  };`;
  const { FunctionArn } = await lambda.send(
    new CreateFunctionCommand({
      FunctionName,
      Runtime: "nodejs20.x",
      Role: Role.Arn,
      Handler: "index.handler",
      Code: { ZipFile: zip({ "index.js": source }) },
    }),
  );
  try {
    await withPool({ LambdaConfig: { PreTokenGeneration: FunctionArn } }, async (pool, client) => {
      await makeUser(pool.Id, "gus");
      const { AuthenticationResult } = await signIn(client, "gus");
      assert.equal(claims(AuthenticationResult.IdToken).via, "TokenGeneration_Authentication");
    });
  } finally {
    await lambda.send(new DeleteFunctionCommand({ FunctionName }));
    await iam.send(new DeleteRoleCommand({ RoleName }));
  }
});
