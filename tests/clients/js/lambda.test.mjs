// Lambda's and API Gateway v2's APIs through the AWS SDK for JavaScript v3: a function from
// a zip, invocation (result, thrown error, log tail), configuration, an HTTP API in front of
// it, deletion.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import {
  LambdaClient,
  CreateFunctionCommand,
  DeleteFunctionCommand,
  GetFunctionCommand,
  InvokeCommand,
  ListFunctionsCommand,
  UpdateFunctionConfigurationCommand,
} from "@aws-sdk/client-lambda";
import {
  ApiGatewayV2Client,
  CreateApiCommand,
  CreateIntegrationCommand,
  CreateRouteCommand,
  CreateStageCommand,
  DeleteApiCommand,
  GetApiCommand,
  GetApisCommand,
} from "@aws-sdk/client-apigatewayv2";
import { IAMClient, CreateRoleCommand, DeleteRoleCommand } from "@aws-sdk/client-iam";
import { clientConfig, unique, zip } from "./lib.mjs";

const lambda = new LambdaClient(clientConfig());
const iam = new IAMClient(clientConfig());
const roleName = unique("js-clients");
// The function's execution role: Lambda may assume it (it needs no permissions here).
const LAMBDA_TRUST = JSON.stringify({
  Version: "2012-10-17",
  Statement: [
    { Effect: "Allow", Principal: { Service: "lambda.amazonaws.com" }, Action: "sts:AssumeRole" },
  ],
});
const apigw = new ApiGatewayV2Client(clientConfig());
const name = unique("js-fn");


const HANDLER = `
export const handler = async (event, context) => {
  console.log("js-clients got", JSON.stringify(event));
  if (event.fail) throw new RangeError("the SDK asked for it");
  return { echo: event, greeting: process.env.GREETING ?? null, name: context.functionName };
};
`;

after(async () => {
  try {
    await lambda.send(new DeleteFunctionCommand({ FunctionName: name }));
  } catch {}
  try {
    await iam.send(new DeleteRoleCommand({ RoleName: roleName }));
  } catch {}
  lambda.destroy();
  apigw.destroy();
  iam.destroy();
});

test("create, invoke, configure, list and delete a function", async () => {
  const role = await iam.send(
    new CreateRoleCommand({ RoleName: roleName, AssumeRolePolicyDocument: LAMBDA_TRUST }),
  );
  const created = await lambda.send(
    new CreateFunctionCommand({
      FunctionName: name,
      Runtime: "nodejs20.x",
      Role: role.Role.Arn,
      Handler: "index.handler",
      Code: { ZipFile: zip({ "index.mjs": HANDLER }) },
      Environment: { Variables: { GREETING: "hello" } },
    }),
  );
  assert.equal(created.State, "Active");
  assert.equal(created.Runtime, "nodejs20.x");

  const ok = await lambda.send(
    new InvokeCommand({ FunctionName: name, Payload: Buffer.from('{"a":1}'), LogType: "Tail" }),
  );
  assert.equal(ok.StatusCode, 200);
  assert.equal(ok.FunctionError, undefined);
  assert.deepEqual(JSON.parse(Buffer.from(ok.Payload).toString()), {
    echo: { a: 1 },
    greeting: "hello",
    name,
  });
  const tail = Buffer.from(ok.LogResult, "base64").toString();
  assert.match(tail, /js-clients got \{"a":1\}/);

  const failed = await lambda.send(
    new InvokeCommand({ FunctionName: name, Payload: Buffer.from('{"fail":true}') }),
  );
  assert.equal(failed.FunctionError, "Unhandled");
  const err = JSON.parse(Buffer.from(failed.Payload).toString());
  assert.equal(err.errorType, "RangeError");
  assert.equal(err.errorMessage, "the SDK asked for it");

  await lambda.send(
    new UpdateFunctionConfigurationCommand({
      FunctionName: name,
      Environment: { Variables: { GREETING: "hola" } },
    }),
  );
  const again = await lambda.send(new InvokeCommand({ FunctionName: name, Payload: Buffer.from("{}") }));
  assert.equal(JSON.parse(Buffer.from(again.Payload).toString()).greeting, "hola");

  const got = await lambda.send(new GetFunctionCommand({ FunctionName: name }));
  assert.equal(got.Configuration.Handler, "index.handler");
  const listed = await lambda.send(new ListFunctionsCommand({}));
  assert.ok(listed.Functions.some((f) => f.FunctionName === name));

  // Behind an HTTP API.
  const api = await apigw.send(new CreateApiCommand({ Name: unique("js-api"), ProtocolType: "HTTP" }));
  const integration = await apigw.send(
    new CreateIntegrationCommand({
      ApiId: api.ApiId,
      IntegrationType: "AWS_PROXY",
      IntegrationUri: created.FunctionArn,
      PayloadFormatVersion: "2.0",
    }),
  );
  await apigw.send(
    new CreateRouteCommand({
      ApiId: api.ApiId,
      RouteKey: "GET /hello/{who}",
      Target: `integrations/${integration.IntegrationId}`,
    }),
  );
  await apigw.send(new CreateStageCommand({ ApiId: api.ApiId, StageName: "$default", AutoDeploy: true }));
  const apis = await apigw.send(new GetApisCommand({}));
  assert.ok(apis.Items.some((a) => a.ApiId === api.ApiId));
  const res = await fetch(`${api.ApiEndpoint}/hello/world?x=1`);
  assert.equal(res.status, 200);
  const echoed = (await res.json()).echo;
  assert.equal(echoed.routeKey, "GET /hello/{who}");
  assert.deepEqual(echoed.pathParameters, { who: "world" });
  assert.deepEqual(echoed.queryStringParameters, { x: "1" });
  await apigw.send(new DeleteApiCommand({ ApiId: api.ApiId }));
  await assert.rejects(
    apigw.send(new GetApiCommand({ ApiId: api.ApiId })),
    (e) => e.name === "NotFoundException",
  );

  await lambda.send(new DeleteFunctionCommand({ FunctionName: name }));
  await assert.rejects(
    lambda.send(new GetFunctionCommand({ FunctionName: name })),
    (e) => e.name === "ResourceNotFoundException",
  );
});
