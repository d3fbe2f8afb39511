# sluice's Python runtime shim: runs a Lambda handler (`_HANDLER`, e.g. `handler.handler`,
# from LAMBDA_TASK_ROOT) in a warm process.
#
# Protocol, one JSON document per line:
#   stdin  <- {"requestId","deadlineMs","invokedFunctionArn","event"}
#   stdout -> {"requestId","result"} | {"requestId","error":{"errorType","errorMessage","stackTrace"}}
# The protocol keeps its own copy of file descriptor 1; fd 1 itself is pointed at stderr, so
# whatever the handler (or a program it starts) prints goes to stderr. Lines printed through
# sys.stdout are prefixed with "\x1fO" so sluice can tell them apart. After each invocation
# a marker line "\x1eEND <requestId>" is written to stderr, before the response.
import importlib
import json
import logging
import os
import sys
import time
import traceback

_proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
os.dup2(2, 1)
_current = {"id": ""}


class _Stdout:
    """Line-buffered writer that sends each line to stderr with the stdout marker."""

    def __init__(self):
        self._pending = ""

    def write(self, text):
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            sys.__stderr__.write("\x1fO" + line + "\n")
        return len(text)

    def flush(self):
        if self._pending:
            sys.__stderr__.write("\x1fO" + self._pending + "\n")
            self._pending = ""
        sys.__stderr__.flush()

    def isatty(self):
        return False


sys.stdout = _Stdout()


class _RequestIdFilter(logging.Filter):
    def filter(self, record):
        record.aws_request_id = _current["id"]
        return True


_log_handler = logging.StreamHandler(sys.stdout)
_log_handler.setFormatter(
    logging.Formatter(
        "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s",
        "%Y-%m-%dT%H:%M:%S",
    )
)
_log_handler.formatter.converter = time.gmtime
_log_handler.addFilter(_RequestIdFilter())
logging.getLogger().addHandler(_log_handler)
logging.getLogger().setLevel(logging.INFO)

_mem = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "0") or 0)
if _mem and os.environ.get("SLUICE_LIMIT_MEMORY") == "1":
    try:
        import resource

        # The handler's memory plus headroom for the interpreter itself.
        limit = (_mem + 512) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError) as e:
        sys.__stderr__.write("sluice runtime: cannot limit memory: %s\n" % e)


class LambdaContext:
    def __init__(self, req):
        self.aws_request_id = req["requestId"]
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.invoked_function_arn = req.get("invokedFunctionArn", "")
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self._deadline_ms = req["deadlineMs"]

    def get_remaining_time_in_millis(self):
        return max(0, int(self._deadline_ms - time.time() * 1000))


class _InitError(Exception):
    def __init__(self, error_type, message):
        super().__init__(message)
        self.error_type = error_type


def _load_handler():
    spec = os.environ.get("_HANDLER", "")
    root = os.environ.get("LAMBDA_TASK_ROOT", os.getcwd())
    if "." not in spec:
        raise _InitError("Runtime.MalformedHandlerName", "bad handler %r: expected <module>.<function>" % spec)
    module_name, function_name = spec.rsplit(".", 1)
    module_name = module_name.replace("/", ".")
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - reported to the caller as Lambda does
        raise _InitError("Runtime.ImportModuleError", "Unable to import module '%s': %s" % (module_name, e))
    fn = getattr(module, function_name, None)
    if not callable(fn):
        raise _InitError("Runtime.HandlerNotFound", "Handler '%s' missing on module '%s'" % (function_name, module_name))
    return fn


def _error_doc(e):
    error_type = getattr(e, "error_type", None) or type(e).__name__
    return {
        "errorType": error_type,
        "errorMessage": str(e),
        "stackTrace": traceback.format_tb(e.__traceback__),
    }


def main():
    handler = None
    load_error = None
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
        except ValueError as e:
            sys.__stderr__.write("sluice runtime: unreadable request: %s\n" % e)
            continue
        _current["id"] = req["requestId"]
        try:
            if handler is None and load_error is None:
                try:
                    handler = _load_handler()
                except _InitError as e:
                    load_error = e
            if load_error is not None:
                raise load_error
            result = handler(req.get("event"), LambdaContext(req))
            response = {"requestId": req["requestId"], "result": result}
            text = json.dumps(response)
        except Exception as e:  # noqa: BLE001 - a handler error is the invocation's result
            text = json.dumps({"requestId": req["requestId"], "error": _error_doc(e)})
        sys.stdout.flush()
        sys.__stderr__.write("\x1eEND %s\n" % req["requestId"])
        sys.__stderr__.flush()
        _proto.write(text + "\n")
        _proto.flush()


main()
