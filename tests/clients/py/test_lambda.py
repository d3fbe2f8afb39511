"""Lambda's API through boto3: functions from a zip, invocation (results, errors, tails,
queued and dry runs), configuration, event-source mappings, deletion."""

import base64
import io
import json
import zipfile

import botocore
import pytest

from conftest import ACCOUNT_ID, error_code, eventually, unique

HANDLER = """
import os

def handler(event, context):
    print("py-clients got", event)
    if event.get("fail"):
        raise RuntimeError("boto3 asked for it")
    return {"echo": event, "greeting": os.environ.get("GREETING"), "name": context.function_name}
"""


def zipped(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


@pytest.fixture
def function(awslambda, lambda_role):
    name = unique("py-fn")
    awslambda.create_function(
        FunctionName=name,
        Runtime="python3.12",
        Role=lambda_role,
        Handler="app.handler",
        Code={"ZipFile": zipped({"app.py": HANDLER})},
        Environment={"Variables": {"GREETING": "hello"}},
        Timeout=10,
    )
    yield name
    try:
        awslambda.delete_function(FunctionName=name)
    except botocore.exceptions.ClientError:
        pass


def test_create_get_list(awslambda, function):
    got = awslambda.get_function(FunctionName=function)
    cfg = got["Configuration"]
    assert cfg["FunctionName"] == function
    assert cfg["Runtime"] == "python3.12"
    assert cfg["Handler"] == "app.handler"
    assert cfg["State"] == "Active"
    assert cfg["Environment"]["Variables"] == {"GREETING": "hello"}
    assert cfg["FunctionArn"].endswith(f":function:{function}")
    names = [f["FunctionName"] for f in awslambda.list_functions()["Functions"]]
    assert function in names
    paginated = []
    for page in awslambda.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 1}):
        paginated += [f["FunctionName"] for f in page["Functions"]]
    assert function in paginated


def test_invoke_result_error_tail_and_event(awslambda, function):
    r = awslambda.invoke(FunctionName=function, Payload=json.dumps({"a": 1}), LogType="Tail")
    assert r["StatusCode"] == 200
    assert "FunctionError" not in r
    body = json.loads(r["Payload"].read())
    assert body == {"echo": {"a": 1}, "greeting": "hello", "name": function}
    tail = base64.b64decode(r["LogResult"]).decode()
    assert "py-clients got {'a': 1}" in tail
    assert "END RequestId: " in tail

    r = awslambda.invoke(FunctionName=function, Payload=json.dumps({"fail": True}))
    assert r["FunctionError"] == "Unhandled"
    err = json.loads(r["Payload"].read())
    assert err["errorType"] == "RuntimeError"
    assert err["errorMessage"] == "boto3 asked for it"

    r = awslambda.invoke(FunctionName=function, InvocationType="Event", Payload=b"{}")
    assert r["StatusCode"] == 202
    r = awslambda.invoke(FunctionName=function, InvocationType="DryRun")
    assert r["StatusCode"] == 204


def test_update_configuration_and_code(awslambda, function):
    awslambda.update_function_configuration(
        FunctionName=function, Environment={"Variables": {"GREETING": "bonjour"}}, Timeout=20
    )
    r = awslambda.invoke(FunctionName=function, Payload=b"{}")
    assert json.loads(r["Payload"].read())["greeting"] == "bonjour"
    new = "def handler(event, context):\n    return 'v2'\n"
    cfg = awslambda.update_function_code(FunctionName=function, ZipFile=zipped({"app.py": new}))
    assert cfg["Timeout"] == 20
    r = awslambda.invoke(FunctionName=function, Payload=b"{}")
    assert json.loads(r["Payload"].read()) == "v2"


def test_event_source_mapping_lifecycle(awslambda, kinesis, function):
    stream = unique("py-esm")
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    arn = f"arn:aws:kinesis:us-east-2:{ACCOUNT_ID}:stream/{stream}"
    m = awslambda.create_event_source_mapping(
        FunctionName=function, EventSourceArn=arn, StartingPosition="TRIM_HORIZON", BatchSize=5
    )
    uuid = m["UUID"]
    assert m["EventSourceArn"] == arn
    assert m["BatchSize"] == 5
    eventually(
        lambda: awslambda.get_event_source_mapping(UUID=uuid)["State"] == "Enabled",
        "the mapping to be Enabled",
    )
    listed = awslambda.list_event_source_mappings(FunctionName=function)["EventSourceMappings"]
    assert [x["UUID"] for x in listed] == [uuid]
    kinesis.put_record(StreamName=stream, PartitionKey="k", Data=b"from boto3")
    eventually(
        lambda: awslambda.get_event_source_mapping(UUID=uuid)["LastProcessingResult"] == "OK",
        "the record to be processed",
    )
    updated = awslambda.update_event_source_mapping(UUID=uuid, BatchSize=7, Enabled=False)
    assert updated["BatchSize"] == 7
    eventually(
        lambda: awslambda.get_event_source_mapping(UUID=uuid)["State"] == "Disabled",
        "the mapping to be Disabled",
    )
    assert awslambda.delete_event_source_mapping(UUID=uuid)["State"] == "Deleting"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        awslambda.get_event_source_mapping(UUID=uuid)
    assert error_code(e) == "ResourceNotFoundException"
    kinesis.delete_stream(StreamName=stream)


def test_errors(awslambda, function, lambda_role):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        awslambda.get_function(FunctionName=unique("missing"))
    assert error_code(e) == "ResourceNotFoundException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        awslambda.create_function(
            FunctionName=function, Runtime="python3.12", Role=lambda_role, Handler="app.handler",
            Code={"ZipFile": zipped({"app.py": HANDLER})},
        )
    assert error_code(e) == "ResourceConflictException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        awslambda.create_function(
            FunctionName=unique("py-bad"), Runtime="python3.12", Role=lambda_role,
            Handler="missing.handler", Code={"ZipFile": zipped({"app.py": HANDLER})},
        )
    assert error_code(e) == "InvalidParameterValueException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        awslambda.create_function(
            FunctionName=unique("py-bad"), Runtime="python3.12",
            Role=f"arn:aws:iam::{ACCOUNT_ID}:role/{unique('missing')}",
            Handler="app.handler", Code={"ZipFile": zipped({"app.py": HANDLER})},
        )
    assert error_code(e) == "InvalidParameterValueException"
    assert "The role defined for the function cannot be assumed by Lambda." in str(e.value)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        awslambda.invoke(FunctionName=function, Payload=b"not json")
    assert error_code(e) == "InvalidRequestContentException"
    awslambda.delete_function(FunctionName=function)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        awslambda.invoke(FunctionName=function, Payload=b"{}")
    assert error_code(e) == "ResourceNotFoundException"


def test_http_api_through_apigatewayv2(awslambda, edge, region, function):
    from conftest import client

    apigw = client("apigatewayv2", edge, region)
    api = apigw.create_api(Name=unique("py-api"), ProtocolType="HTTP")
    api_id = api["ApiId"]
    arn = awslambda.get_function(FunctionName=function)["Configuration"]["FunctionArn"]
    integration = apigw.create_integration(
        ApiId=api_id, IntegrationType="AWS_PROXY", IntegrationUri=arn, PayloadFormatVersion="2.0"
    )
    route = apigw.create_route(
        ApiId=api_id, RouteKey="POST /echo", Target=f"integrations/{integration['IntegrationId']}"
    )
    apigw.create_stage(ApiId=api_id, StageName="$default", AutoDeploy=True)
    assert [r["RouteKey"] for r in apigw.get_routes(ApiId=api_id)["Items"]] == ["POST /echo"]
    assert apigw.get_route(ApiId=api_id, RouteId=route["RouteId"])["Target"].startswith("integrations/")
    assert api_id in [a["ApiId"] for a in apigw.get_apis()["Items"]]

    import urllib.request

    req = urllib.request.Request(api["ApiEndpoint"] + "/echo", data=b'{"n": 1}', method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        body = json.loads(resp.read())
    assert body["echo"]["routeKey"] == "POST /echo"
    assert body["echo"]["body"] == '{"n": 1}'

    with pytest.raises(botocore.exceptions.ClientError) as e:
        apigw.create_route(ApiId=api_id, RouteKey="not a key")
    assert error_code(e) == "BadRequestException"
    apigw.delete_api(ApiId=api_id)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        apigw.get_api(ApiId=api_id)
    assert error_code(e) == "NotFoundException"
