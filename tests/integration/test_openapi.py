"""docs/openapi.yaml against the code and a running resild.

* Every route registered in workers/*.c (the app_get/app_post/app_patch/
  app_put/app_delete/app_route calls, wherever they moved) has its path
  and method in the document; the test hooks (/__test/, enabled only by
  RESIL_TEST_HOOKS) are not part of the API.
* The document is well formed: OpenAPI 3.1, unique operationIds, every
  $ref resolves, path templates and path parameters agree, every
  operation has responses, every error answer outside /health uses the
  Error envelope, security names a declared scheme.
* Every error code the server can send (app_fail/http_send_error calls and
  the HTTP core's err_code values in src/ and workers/) is listed in
  components.schemas.ErrorCode.
* Every documented path and method is served by a real resild: never the
  router's own 404 ("route not found", compared with what an unknown path
  gets) nor 405; the status is one the document lists for that operation
  and the JSON body matches that response's schema, both without a token
  and with an admin's token.

Needs PyYAML (Debian: python3-yaml)."""
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import TOP, Server, import_system_module, run_tests  # noqa: E402

yaml = import_system_module("yaml")  # None: each test then fails, naming the missing package

DOC_PATH = os.path.join(TOP, "docs", "openapi.yaml")
METHODS = ("get", "post", "put", "patch", "delete")
# A well-formed id that names no document.
ABSENT_ID = "ffffffffffffffffffffffff"


def strip_c_comments(src):
    """The C source without comments; string and character literals kept."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c in "\"'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            out.append(src[i:j + 1])
            i = j + 1
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * src.count("\n", i, j))  # keep line numbers
            i = j
        elif src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        else:
            out.append(c)
            i += 1
    return "".join(out)


SHORTHAND = re.compile(r'\bapp_(get|post|put|patch|delete)\s*\(\s*[A-Za-z_][\w.>-]*\s*,\s*"([^"]*)"')
GENERIC = re.compile(r'\bapp_route\s*\(\s*[A-Za-z_][\w.>-]*\s*,\s*([^,"]+?)\s*,\s*"([^"]*)"')


def registered_routes():
    """{(method, path)} -> "file:line" for every route in workers/*.c."""
    routes = {}
    files = sorted(glob.glob(os.path.join(TOP, "workers", "*.c")))
    assert files, "no workers/*.c under %s" % TOP
    for f in files:
        with open(f, encoding="utf-8") as fh:
            src = strip_c_comments(fh.read())
        where = lambda m: "%s:%d" % (os.path.relpath(f, TOP), src.count("\n", 0, m.start()) + 1)  # noqa: E731
        for m in SHORTHAND.finditer(src):
            routes[(m.group(1), m.group(2))] = where(m)
        for m in GENERIC.finditer(src):
            flags = re.findall(r"HTTP_M_([A-Z]+)", m.group(1))
            assert flags, "%s: cannot read the methods of app_route(%s, ...)" % (where(m), m.group(1))
            for meth in flags:
                routes[(meth.lower(), m.group(2))] = where(m)
    return {k: v for k, v in routes.items() if not k[1].startswith("/__test/")}


def norm(path):
    """Router pattern or OpenAPI template to one form: {param}, no trailing slash."""
    path = re.sub(r":([A-Za-z_]\w*)", r"{\1}", path)
    return path.rstrip("/") if len(path) > 1 else path


def load_doc():
    assert yaml is not None, "PyYAML is missing (Debian: python3-yaml; scripts/install-deps.sh --test installs it)"
    with open(DOC_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def operations(doc):
    for path, item in doc["paths"].items():
        for meth in METHODS:
            if meth in item:
                yield path, meth, item, item[meth]


def resolve(doc, ref):
    assert ref.startswith("#/"), "only local $refs are used: %s" % ref
    node = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, "$ref %s does not resolve" % ref
        node = node[part]
    return node


def deref(doc, node):
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(doc, node["$ref"])
    return node


# --------------------------------------------------------------- the tests

def test_every_registered_route_is_documented():
    routes = registered_routes()
    # Guard against a scan that silently finds nothing.
    for must in [("get", "/health"), ("post", "/api/auth/login"), ("get", "/api/posts/:id"), ("get", "/ws")]:
        assert must in routes, "route scan of workers/*.c did not find %s %s: is the regex out of date?" % must
    doc = load_doc()
    documented = {(m, norm(p)) for p, m, _, _ in operations(doc)}
    missing = ["%s %s (registered at %s)" % (m.upper(), p, where)
               for (m, p), where in sorted(routes.items()) if (m, norm(p)) not in documented]
    assert not missing, "routes missing from docs/openapi.yaml:\n  " + "\n  ".join(missing)
    print("  %d registered routes, all documented" % len(routes))


def test_document_is_well_formed():
    doc = load_doc()
    assert str(doc.get("openapi", "")).startswith("3.1."), "not an OpenAPI 3.1 document"
    for key in ("title", "version"):
        assert doc["info"].get(key), "info.%s missing" % key
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                resolve(doc, node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(doc)

    ids = set()
    for path, meth, item, op in operations(doc):
        name = "%s %s" % (meth.upper(), path)
        assert op.get("operationId"), "%s has no operationId" % name
        assert op["operationId"] not in ids, "operationId %s used twice" % op["operationId"]
        ids.add(op["operationId"])
        assert op.get("summary"), "%s has no summary" % name
        assert op.get("responses"), "%s has no responses" % name
        for status, resp in op["responses"].items():
            assert re.fullmatch(r"[1-5]\d\d", str(status)), "%s: response key %r is not a status" % (name, status)
            resp = deref(doc, resp)
            assert resp.get("description"), "%s %s has no description" % (name, status)
            if int(status) >= 400 and "content" in resp and not path.startswith("/health"):
                schema = deref(doc, resp["content"]["application/json"]["schema"])
                assert schema is doc["components"]["schemas"]["Error"], \
                    "%s %s: an error answer must use the Error envelope" % (name, status)
        for req in op.get("security", []):
            for scheme in req:
                assert scheme in schemes, "%s names an undeclared security scheme %s" % (name, scheme)
        params = [deref(doc, p) for p in item.get("parameters", []) + op.get("parameters", [])]
        in_path = {p["name"] for p in params if p["in"] == "path"}
        templ = set(re.findall(r"\{(\w+)\}", path))
        assert in_path == templ, "%s: path parameters %s, template has %s" % (name, sorted(in_path), sorted(templ))
        if meth in ("post", "patch", "put") and "requestBody" in op:
            assert "application/json" in op["requestBody"]["content"], "%s: no JSON body" % name


ERROR_CALL = re.compile(r"\b(?:app_fail|http_send_error|sync_fail|conn_write_error|send_error|err_code)\b")
CODE_LITERAL = re.compile(r'"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*)"')


def error_codes_in_code():
    """{code: "file:line"} for every error code src/ and workers/ can send."""
    codes = {}
    for f in sorted(glob.glob(os.path.join(TOP, "src", "*.c")) + glob.glob(os.path.join(TOP, "workers", "*.c"))):
        with open(f, encoding="utf-8") as fh:
            lines = strip_c_comments(fh.read()).split("\n")
        for no, line in enumerate(lines, 1):
            if not ERROR_CALL.search(line):
                continue
            for m in CODE_LITERAL.finditer(line):
                if len(m.group(1)) >= 4:
                    codes.setdefault(m.group(1), "%s:%d" % (os.path.relpath(f, TOP), no))
    return codes


def test_every_error_code_is_documented():
    codes = error_codes_in_code()
    for must in ("VALIDATION_ERROR", "NOT_FOUND", "METHOD_NOT_ALLOWED", "HEADERS_TOO_LARGE"):
        assert must in codes, "error code scan did not find %s: is the regex out of date?" % must
    doc = load_doc()
    listed = set(doc["components"]["schemas"]["ErrorCode"]["enum"])
    missing = ["%s (sent at %s)" % (c, w) for c, w in sorted(codes.items()) if c not in listed]
    assert not missing, "error codes missing from ErrorCode in docs/openapi.yaml:\n  " + "\n  ".join(missing)
    unused = sorted(listed - set(codes))
    if unused:
        print("  note: documented codes not found by the scan: %s" % ", ".join(unused))
    print("  %d error codes, all documented" % len(codes))


def check_schema(doc, schema, value, where="$"):
    """The JSON Schema keywords the document uses, checked against an
    answer: a list of mismatches (empty when it conforms)."""
    schema = deref(doc, schema)
    if schema is True or schema == {}:
        return []
    errs = []
    if "$ref" in schema:  # a $ref with sibling keywords (3.1 allows them)
        errs += check_schema(doc, resolve(doc, schema["$ref"]), value, where)
    if "const" in schema and value != schema["const"]:
        errs.append("%s: %r is not %r" % (where, value, schema["const"]))
    if "enum" in schema and value not in schema["enum"]:
        errs.append("%s: %r is not one of %s" % (where, value, schema["enum"]))
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    t = schema.get("type")
    if t and not (isinstance(value, types[t]) and not (t in ("integer", "number") and isinstance(value, bool))):
        return errs + ["%s: %r is not of type %s" % (where, value, t)]
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errs.append("%s: %r does not match %s" % (where, value, schema["pattern"]))
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            errs.append("%s: length of %r out of range" % (where, value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            errs.append("%s: %r out of range" % (where, value))
    if isinstance(value, dict):
        for k in schema.get("required", []):
            if k not in value:
                errs.append("%s: %s is missing" % (where, k))
        props = schema.get("properties", {})
        for k, v in value.items():
            if k in props:
                errs += check_schema(doc, props[k], v, "%s.%s" % (where, k))
            elif isinstance(schema.get("additionalProperties"), dict):
                errs += check_schema(doc, schema["additionalProperties"], v, "%s.%s" % (where, k))
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errs += check_schema(doc, schema["items"], v, "%s[%d]" % (where, i))
    return errs


def concrete(path):
    return re.sub(r"\{\w+\}", ABSENT_ID, path)


def try_every_operation(s, doc, unknown, headers, label):
    problems = []
    for path, meth, _, op in operations(doc):
        h = dict(headers)
        body = None
        if meth in ("post", "patch", "put"):
            body = "{}"
            h["Content-Type"] = "application/json"
        st, _, data = s.request(meth.upper(), concrete(path), body=body, headers=h)
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            answer = {}
        name = "%s %s (%s)" % (meth.upper(), path, label)
        if st == unknown[0] and isinstance(answer, dict) and \
                (answer.get("code"), answer.get("error")) == unknown[1:]:
            problems.append("%s: not served, answered like an unknown path (%d %s)" % (name, st, answer.get("error")))
        elif st == 405:
            problems.append("%s: 405, the router has the path but not this method" % name)
        elif str(st) not in {str(k) for k in op["responses"]}:
            problems.append("%s: answered %d %s, not among its documented responses %s"
                            % (name, st, answer.get("code") if isinstance(answer, dict) else "",
                               sorted(str(k) for k in op["responses"])))
        else:
            resp = deref(doc, {str(k): v for k, v in op["responses"].items()}[str(st)])
            schema = resp.get("content", {}).get("application/json", {}).get("schema")
            if schema is not None:
                problems += ["%s: answered %d, unlike its documented body: %s" % (name, st, e)
                             for e in check_schema(doc, schema, answer)]
    return problems


def test_every_documented_route_is_served():
    doc = load_doc()
    s = Server(workers=1, env={"RESIL_RATE_LIMIT": "10000/15m"}).start()
    try:
        st, _, answer = s.json("GET", "/api/no-such-route-for-openapi")
        assert st == 404 and answer["code"] == "NOT_FOUND", "unknown path answered %d %r" % (st, answer)
        unknown = (st, answer["code"], answer["error"])
        st2, _, answer2 = s.json("GET", "/no/such/route")
        assert (st2, answer2["code"], answer2["error"]) == unknown, "unknown paths answer differently"

        problems = try_every_operation(s, doc, unknown, {}, "no token")

        st, _, reg = s.json("POST", "/api/auth/register",
                            {"username": "openapi_admin", "email": "openapi@example.com", "password": "correct-horse-1"})
        assert st == 201, "register answered %d %r" % (st, reg)
        token = reg["data"]["token"]
        problems += try_every_operation(s, doc, unknown, {"Authorization": "Bearer " + token}, "admin token")
        assert not problems, "documented operations not served as documented:\n  " + "\n  ".join(problems)
        print("  %d documented operations served" % len(list(operations(doc))))
    finally:
        s.cleanup()


def test_successful_answers_match_the_documented_schemas():
    """Each resource through create, read, update and delete, as the
    document describes them; every answer checked against the schema of
    the response the document lists for its status."""
    doc = load_doc()
    ops = {(m, p): op for p, m, _, op in operations(doc)}
    s = Server(workers=1, env={"RESIL_RATE_LIMIT": "10000/15m"}).start()
    problems = []

    def call(meth, path, want, body=None, token=None, **ids):
        op = ops[(meth, path)]
        h = {"Authorization": "Bearer " + token} if token else {}
        st, _, answer = s.json(meth.upper(), path.format(**ids), body=body, headers=h)
        name = "%s %s" % (meth.upper(), path)
        responses = {str(k): v for k, v in op["responses"].items()}
        if st != want:
            problems.append("%s: answered %d %r, expected %d" % (name, st, answer, want))
        elif str(st) not in responses:
            problems.append("%s: %d is not documented" % (name, st))
        else:
            schema = deref(doc, responses[str(st)]).get("content", {}).get("application/json", {}).get("schema")
            if schema is not None:
                problems.extend("%s %d: %s" % (name, st, e) for e in check_schema(doc, schema, answer))
            elif answer is not None:
                problems.append("%s %d: a body %r where none is documented" % (name, st, answer))
        return answer if isinstance(answer, dict) else {}

    try:
        reg = call("post", "/api/auth/register", 201,
                   {"username": "schema_admin", "email": "schema@example.com", "password": "correct-horse-1"})
        assert reg.get("data"), "cannot go on without an account: %s" % problems
        tok, me = reg["data"]["token"], reg["data"]["user"]["id"]
        call("post", "/api/auth/login", 200, {"email": "schema@example.com", "password": "correct-horse-1"})
        call("get", "/api/users/me", 200, token=tok)
        call("get", "/api/users", 200, token=tok)
        call("get", "/api/users/{id}", 200, token=tok, id=me)
        call("patch", "/api/users/{id}", 200, {"username": "schema_admin2"}, token=tok, id=me)

        post = call("post", "/api/posts", 201, {"title": "t", "content": "c", "category": "news"}, token=tok)
        pid = post.get("data", {}).get("id", ABSENT_ID)
        call("get", "/api/posts", 200)
        call("get", "/api/posts/{id}", 200, id=pid)
        call("patch", "/api/posts/{id}", 200, {"title": "t2"}, token=tok, id=pid)
        call("delete", "/api/posts/{id}", 204, token=tok, id=pid)

        room = call("post", "/api/rooms", 201, {"name": "schema room"}, token=tok)
        rid = room.get("data", {}).get("id", ABSENT_ID)
        call("get", "/api/rooms", 200, token=tok)
        call("post", "/api/rooms/{id}/members", 200, {"userId": me}, token=tok, id=rid)
        call("post", "/api/rooms/{id}/messages", 201, {"content": "hello"}, token=tok, id=rid)
        call("get", "/api/rooms/{id}/messages", 200, token=tok, id=rid)

        pat = call("post", "/api/patients", 201, {"name": "Ada Lovelace", "email": "ada@example.com",
                                                  "dateOfBirth": "1990-12-10", "ssn": "123-45-6789",
                                                  "medicalRecord": "none", "externalId": "ext-1"}, token=tok)
        aid = pat.get("data", {}).get("id", ABSENT_ID)
        call("get", "/api/patients", 200, token=tok)
        call("get", "/api/patients/{id}", 200, token=tok, id=aid)
        call("patch", "/api/patients/{id}", 200, {"status": "discharged"}, token=tok, id=aid)
        call("post", "/api/patients/{id}/sync", 503, token=tok, id=aid)  # no external API configured
        call("delete", "/api/patients/{id}", 204, token=tok, id=aid)
        call("delete", "/api/users/{id}", 204, token=tok, id=me)
        assert not problems, "answers unlike the document:\n  " + "\n  ".join(problems)
    finally:
        s.cleanup()


if __name__ == "__main__":
    run_tests([test_every_registered_route_is_documented, test_document_is_well_formed,
               test_every_error_code_is_documented, test_every_documented_route_is_served,
               test_successful_answers_match_the_documented_schemas])
