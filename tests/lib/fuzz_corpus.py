"""fuzz_corpus — hostile inputs kept as a regression corpus (issue 19, item 6).

Each came up while attacking jobvisor-cp and the agent: malformed JSON, depth
bombs, huge bodies, NUL and UTF-8 cases, header abuse, path tricks, repeated
Content-Length, chunked abuse. tests/e2e/test_fuzz_corpus.py replays them
against the real binaries (the ASan build under `make test`) and asserts a
clear answer every time and a process that lives on.

BODIES: (name, JSON text as bytes). Each is sent as the body of POST /v1/jobs
(expect 400 with a message), handed to the agent as a poll answer, and given
to `jobvisor run --params` (expect exit 2 with a message).

REQUESTS: (name, raw HTTP request, expected statuses). {ADMIN} and {AGENT}
stand for the admin and an agent token. parse_answer() reads the status and
body of an answer (after any 100 Continue).
"""

JOB = b'{"type":"BACKUP_INSTANCE","agentId":"agent-1","instanceId":"i1","params":%s}'

BODIES = [
    ("empty", b""),
    ("whitespace", b"   \n "),
    ("open-brace", b"{"),
    ("missing-value", b'{"a":}'),
    ("trailing-comma", b'{"type":"BACKUP_INSTANCE",}'),
    ("trailing-garbage", b"{} x"),
    ("two-values", b"{}{}"),
    ("array-not-object", b"[1,2]"),
    ("string-not-object", b'"str"'),
    ("nul-bytes", b"\x00" * 100),
    ("single-quotes", b"{'type':'BACKUP_INSTANCE'}"),
    ("bad-escape", b'{"a":"\\uZZZZ"}'),
    ("number-overflow", b'{"type":"BACKUP_INSTANCE","agentId":"agent-1","instanceId":"i1","maxAttempts":1e999999}'),
    ("number-nan", b'{"maxAttempts":NaN}'),
    ("depth-arrays", b"[" * 5000 + b"]" * 5000),
    ("depth-objects", b'{"a":' * 3000 + b"1" + b"}" * 3000),
    ("depth-in-params", JOB % (b'{"a":' * 70 + b"1" + b"}" * 70)),
    ("depth-unbalanced", b"[" * 100000),
    ("nul-in-instance", b'{"type":"BACKUP_INSTANCE","agentId":"agent-1","instanceId":"victim\\u0000../../etc","params":{}}'),
    ("nul-in-jobid", b'{"type":"BACKUP_INSTANCE","agentId":"agent-1","instanceId":"i1","jobId":"job1\\u0000x","params":{}}'),
    ("nul-in-param", JOB % b'{"backupId":"b0\\u0000x"}'),
    ("nul-in-key", JOB % b'{"backupId\\u0000x":"b0"}'),
    ("nul-raw-in-string", b'{"type":"BACKUP\x00_INSTANCE","agentId":"agent-1","instanceId":"i1"}'),
    ("utf8-ff", JOB % b'{"note":"world\xff.dat"}'),
    ("utf8-overlong-slash", b'{"type":"BACKUP_INSTANCE","agentId":"agent-1","instanceId":"i\xc0\xaf","params":{}}'),
    ("utf8-overlong-nul", JOB % b'{"note":"a\xc0\x80b"}'),
    ("utf8-lone-high-surrogate", JOB % b'{"note":"\\ud800"}'),
    ("utf8-lone-low-surrogate", JOB % b'{"note":"\\udc00x"}'),
    ("utf8-raw-surrogate", JOB % b'{"note":"\xed\xa0\x80"}'),
    ("utf8-truncated", JOB % b'{"note":"\xe2\x82"}'),
    ("utf8-above-max", JOB % b'{"note":"\xf4\x90\x80\x80"}'),
    ("utf8-in-key", JOB % b'{"n\xffote":"x"}'),
    ("params-too-big", JOB % (b'{"note":"' + b"x" * 70000 + b'"}')),
    ("many-keys", JOB % (b"{" + b",".join(b'"k%d":1' % i for i in range(20000)) + b"}")),
]

_HOST = b"Host: 127.0.0.1\r\n"


def _req(method, path, body=None, token=b"{ADMIN}", headers=b"", cl=True):
    head = method + b" " + path + b" HTTP/1.1\r\n" + _HOST
    if token is not None:
        head += b"Authorization: Bearer " + token + b"\r\n"
    if body is not None and cl:
        head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    return head + headers + b"\r\n" + (body or b"")


def _chunked(body_chunks, extra=b""):
    return (b"POST /v1/jobs HTTP/1.1\r\n" + _HOST + b"Authorization: Bearer {ADMIN}\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n" + extra + b"\r\n" + body_chunks)


BAD = {400}
REQUESTS = [
    # header abuse
    ("head-too-large", _req(b"GET", b"/v1/jobs", headers=b"X-Pad: " + b"a" * 20000 + b"\r\n"), {431}),
    ("many-headers", _req(b"GET", b"/v1/jobs", headers=b"X-A: b\r\n" * 3000), {431}),
    ("header-without-colon", _req(b"GET", b"/v1/jobs", headers=b"NoColonHere\r\n"), BAD),
    ("header-name-with-space", _req(b"GET", b"/v1/jobs", headers=b"X Bad: 1\r\n"), BAD),
    ("bare-cr-in-header", _req(b"GET", b"/v1/jobs", headers=b"X-A: b\rX-B: c\r\n"), BAD),
    ("nul-in-method", b"G\x00ET /v1/jobs HTTP/1.1\r\n" + _HOST + b"\r\n", BAD),
    ("nul-in-header-value", _req(b"GET", b"/v1/jobs", headers=b"X-A: a\x00b\r\n"), BAD),
    ("garbage-request-line", b"GARBAGE\r\n\r\n", BAD),
    ("unknown-method", _req(b"BREW", b"/v1/jobs"), BAD),
    ("http-version-junk", b"GET /v1/jobs HTTP/1.x\r\n" + _HOST + b"\r\n", BAD),
    ("token-too-long", _req(b"GET", b"/v1/jobs", token=b"a" * 600), {401}),
    ("token-not-bearer", _req(b"GET", b"/v1/jobs", token=None, headers=b"Authorization: Basic YTpi\r\n"), {401}),
    ("token-twice", _req(b"GET", b"/v1/jobs", headers=b"Authorization: Bearer {ADMIN}\r\n"), BAD),
    ("token-of-wrong-kind", _req(b"GET", b"/v1/jobs", token=b"{AGENT}"), {403}),
    ("upgrade-elsewhere", _req(b"POST", b"/v1/agents/agent-1/poll", b"{}", token=b"{AGENT}",
                               headers=b"Connection: Upgrade\r\nUpgrade: websocket\r\n"), BAD),
    ("connect-method", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\n" + _HOST + b"\r\n", BAD),
    # path tricks
    ("dot-segments", _req(b"GET", b"/v1/jobs/../../../etc/passwd"), {400, 404}),
    ("encoded-slashes", _req(b"GET", b"/v1/jobs/..%2f..%2fetc%2fpasswd"), {400, 404}),
    ("encoded-nul-in-id", _req(b"GET", b"/v1/jobs/a%00b"), {400, 404}),
    ("raw-high-byte-in-id", _req(b"GET", b"/v1/jobs/a\xffb"), {400, 404}),
    ("double-slash", _req(b"GET", b"/v1//jobs"), {200, 404}),  # civetweb merges the slashes
    ("trailing-slash", _req(b"GET", b"/v1/jobs/"), {404}),
    ("long-path", _req(b"GET", b"/v1/" + b"a" * 5000), {404}),
    ("too-many-segments", _req(b"GET", b"/v1/jobs/a/b/c/d/e/f"), {404}),
    ("absolute-form-uri", _req(b"GET", b"http://evil.example/v1/jobs"), {400, 404}),
    ("bad-query-utf8", _req(b"GET", b"/v1/jobs?status=%ff%fe"), BAD),
    ("bad-query-limit", _req(b"GET", b"/v1/jobs?limit=99999999999999999999"), BAD),
    ("bad-query-after", _req(b"GET", b"/v1/runs/r1/events?after=-5"), {400, 404}),
    ("agent-id-in-path-encoded", _req(b"POST", b"/v1/agents/agent-1%2f..%2fx/poll", b"{}", token=b"{AGENT}"), {400, 403, 404}),
    # repeated and broken Content-Length
    ("content-length-twice-different", _req(b"POST", b"/v1/jobs", b"{}", headers=b"Content-Length: 3\r\n"), BAD),
    ("content-length-twice-same", _req(b"POST", b"/v1/jobs", b"{}", headers=b"Content-Length: 2\r\n"), BAD),
    ("content-length-list", _req(b"POST", b"/v1/jobs", b"{}", cl=False, headers=b"Content-Length: 2, 2\r\n"), BAD),
    ("content-length-negative", _req(b"POST", b"/v1/jobs", cl=False, headers=b"Content-Length: -5\r\n"), BAD),
    ("content-length-plus", _req(b"POST", b"/v1/jobs", b"{}", cl=False, headers=b"Content-Length: +2\r\n"), BAD),
    ("content-length-overflow", _req(b"POST", b"/v1/jobs", cl=False,
                                     headers=b"Content-Length: 99999999999999999999999\r\n"), BAD),
    ("content-length-and-chunked", _req(b"POST", b"/v1/jobs", b"{}",
                                        headers=b"Transfer-Encoding: chunked\r\n"), BAD),
    # chunked abuse
    ("chunk-size-not-hex", _chunked(b"zz\r\n{}\r\n0\r\n\r\n"), BAD),
    ("chunk-size-overflow", _chunked(b"fffffffffffffffffffff\r\n{}\r\n0\r\n\r\n"), BAD),
    ("chunk-missing-crlf", _chunked(b"2\r\n{}XX0\r\n\r\n"), BAD),
    ("chunked-over-the-cap", _chunked(b"".join(b"10000\r\n" + b" " * 0x10000 + b"\r\n" for _ in range(20))
                                      + b"0\r\n\r\n"), BAD),
    ("chunked-not-last", _req(b"POST", b"/v1/jobs", cl=False,
                              headers=b"Transfer-Encoding: chunked, gzip\r\n") + b"2\r\n{}\r\n0\r\n\r\n", BAD),
    ("chunked-valid-bad-job", _chunked(b"2\r\n{}\r\n0\r\n\r\n"), BAD),
    # huge bodies
    ("declared-huge-with-token", _req(b"POST", b"/v1/jobs", cl=False, headers=b"Content-Length: 2097152\r\n"), BAD),
    ("declared-huge-without-token", _req(b"POST", b"/v1/jobs", token=None, cl=False,
                                         headers=b"Content-Length: 1048576\r\n"), {401}),
    ("sent-huge-with-token", _req(b"POST", b"/v1/jobs", b'{"a":"' + b"x" * (3 << 19) + b'"}'), BAD),
    ("sent-big-without-token", _req(b"POST", b"/v1/jobs", b'{"a":"' + b"x" * 100000 + b'"}', token=None), {401}),
    ("events-flood", _req(b"POST", b"/v1/runs/r1/events",
                          b'{"events":[' + b",".join([b'{"seq":1,"kind":"log"}'] * 1001) + b"]}",
                          token=b"{AGENT}"), BAD),
]


def parse_answer(data):
    head, _, body = data.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):  # interim answers before the real one
        head, _, body = body.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].decode("ascii")
    status = int(line.split(" ")[1])
    return status, body
