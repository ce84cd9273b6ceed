#!/usr/bin/env python3
"""A controllable CloudEvents webhook for the subscription integration tests.

`receiver.py --port N` (0: any free port) prints `{"port": N}` on stdout once it listens, then serves:

- POST/PUT to any path not starting with `/_`: a delivery, parsed with the official CloudEvents SDK
  (binary, structured, or batch), recorded, and answered as the current script says (400 when the
  request holds no valid CloudEvent).
- OPTIONS: the webhook abuse-protection handshake (CloudEvents "HTTP 1.1 Web Hooks" spec), answered
  as configured with `POST /_handshake`.
- `POST /_script`, `GET /_script`, `POST /_handshake`, `GET /_received`, `POST /_reset`: control.

Everything it recorded is read back with `GET /_received`; see `received()` for the shape.
"""

import argparse
import base64
import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.http import from_http
from cloudevents.sdk.converters import is_binary

BATCH = "application/cloudevents-batch+json"
STRUCTURED = "application/cloudevents+json"
# Context attributes reported on their own; every other attribute is an extension.
CORE = ("id", "source", "type", "specversion")
OPTIONAL = ("subject", "time", "datacontenttype", "dataschema")
# How much of an unparsable body a record keeps.
BODY_SNIPPET = 4096


def identity(x):
    return x


class State:
    """Everything the handlers share, behind one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.handshakes = []
        self.seq = 0
        self.answers = []  # [answer, times left]
        self.then = {"status": 200}
        self.handshake = {"allowed_origin": "*", "allowed_rate": None}

    def next_answer(self):
        with self.lock:
            while self.answers and self.answers[0][1] <= 0:
                self.answers.pop(0)
            if self.answers:
                self.answers[0][1] -= 1
                return self.answers[0][0]
            return self.then

    def record(self, entry, into):
        with self.lock:
            self.seq += 1
            entry["seq"] = self.seq
            into.append(entry)

    def received(self):
        with self.lock:
            requests = json.loads(json.dumps(self.requests))
            handshakes = json.loads(json.dumps(self.handshakes))
        accepted, seen, duplicates = [], set(), 0
        for r in requests:
            if 200 <= r["status"] < 300:
                for e in r["events"]:
                    if e["id"] in seen:
                        duplicates += 1
                    seen.add(e["id"])
                    accepted.append(e["id"])
        return {
            "requests": requests,
            "handshakes": handshakes,
            "accepted_ids": accepted,
            "distinct_accepted": len(seen),
            "duplicates": duplicates,
        }


STATE = State()
VERBOSE = False


class BadRequest(Exception):
    pass


def check_answer(a, what):
    if not isinstance(a, dict):
        raise BadRequest(f"{what}: an object expected")
    status = a.get("status", 200)
    if not isinstance(status, int) or not 200 <= status <= 599:
        raise BadRequest(f"{what}: status must be an integer in 200..599")
    times = a.get("times", 1)
    if not isinstance(times, int) or times < 0:
        raise BadRequest(f"{what}: times must be a non-negative integer")
    headers = a.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, (str, int)) for v in headers.values()):
        raise BadRequest(f"{what}: headers must map names to strings")
    delay = a.get("delay_ms", 0)
    if not isinstance(delay, (int, float)) or delay < 0:
        raise BadRequest(f"{what}: delay_ms must be a non-negative number")
    body = a.get("body", "")
    if not isinstance(body, str):
        raise BadRequest(f"{what}: body must be a string")
    return {"status": status, "times": times, "headers": {k: str(v) for k, v in headers.items()},
            "delay_ms": delay, "body": body}


# ---------------------------------------------------------------- CloudEvents parsing

def media_type(content_type):
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json_type(content_type):
    mt = media_type(content_type)
    return mt in ("application/json", "text/json") or mt.endswith("+json")


def is_text_type(content_type):
    mt = media_type(content_type)
    return mt.startswith("text/") or mt in ("application/xml", "application/javascript") or mt.endswith("+xml")


def decode_bytes(raw, content_type):
    """Binary-mode body (or other raw bytes): JSON for JSON types, text for text types, base64
    otherwise; without a content type, the first of the three that works."""
    if content_type is None or is_json_type(content_type):
        try:
            return json.loads(raw), "json"
        except (ValueError, UnicodeDecodeError):
            pass
    if content_type is None or is_json_type(content_type) or is_text_type(content_type):
        try:
            return raw.decode("utf-8"), "text"
        except UnicodeDecodeError:
            pass
    return base64.b64encode(raw).decode("ascii"), "base64"


def describe(event, present, mode):
    """One parsed event as the record shows it. `present`: the attribute names the sender really
    sent (the SDK invents a `time` when there is none)."""
    attrs = dict(event.get_attributes())
    out = {k: attrs.get(k) for k in CORE}
    for k in OPTIONAL:
        if k in present and attrs.get(k) is not None:
            out[k] = attrs[k]
    data = event.get_data()
    if data is None:
        out["data"], out["data_encoding"] = None, None
    elif mode == "binary":
        if isinstance(data, str):
            data = data.encode("utf-8")
        out["data"], out["data_encoding"] = decode_bytes(bytes(data), attrs.get("datacontenttype"))
    elif isinstance(data, (bytes, bytearray)):
        # structured `data_base64`: the SDK hands back the decoded bytes
        out["data"], out["data_encoding"] = base64.b64encode(bytes(data)).decode("ascii"), "base64"
    else:
        # structured `data`: the SDK hands the member's JSON text to the (identity) unmarshaller
        out["data"], out["data_encoding"] = json.loads(data), "json"
    out["extensions"] = {k: v for k, v in attrs.items()
                         if k not in CORE and k not in OPTIONAL and k in present}
    return out


def parse_structured(doc):
    """One structured event (a JSON object already decoded)."""
    if not isinstance(doc, dict):
        raise ValueError(f"a structured event must be a JSON object, not {type(doc).__name__}")
    event = from_http({"content-type": STRUCTURED}, json.dumps(doc).encode("utf-8"), identity)
    return describe(event, {k for k, v in doc.items() if v is not None}, "structured")


def delivery_mode(headers):
    ct = headers.get("content-type", "").lower()
    if ct.startswith(BATCH):
        return "batch"
    if ct.startswith(STRUCTURED) or not any(k.startswith("ce-") for k in headers):
        return "structured"
    return "binary"


def parse_delivery(headers, body):
    """(mode, events) of a delivery; raises on anything that is not a valid CloudEvent."""
    mode = delivery_mode(headers)
    if mode == "batch":
        docs = json.loads(body)
        if not isinstance(docs, list):
            raise ValueError(f"a batch must be a JSON array, not {type(docs).__name__}")
        return mode, [parse_structured(d) for d in docs]
    if mode == "structured":
        return mode, [parse_structured(json.loads(body))]
    # The SDK would read a request lacking one of the four required ce- headers as a structured
    # event (and fail on its body); naming the missing header says more.
    missing = [h for h in ("ce-specversion", "ce-id", "ce-source", "ce-type") if h not in headers]
    if missing:
        raise ValueError(f"binary mode without {', '.join(missing)}")
    assert is_binary(headers)
    # Binary mode: the SDK does not undo the percent-encoding the HTTP binding prescribes for ce-*
    # header values, so the receiver does, as a conforming receiver must.
    sdk_headers = {k: (urllib.parse.unquote(v, errors="strict") if k.startswith("ce-") else v)
                   for k, v in headers.items()}
    event = from_http(sdk_headers, body, identity)
    present = {k[3:] for k in headers if k.startswith("ce-")}
    if "content-type" in headers:
        present.add("datacontenttype")
    return "binary", [describe(event, present, "binary")]


# ---------------------------------------------------------------- HTTP

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "eventgate-test-receiver"

    def log_message(self, fmt, *args):
        if VERBOSE:
            sys.stderr.write("receiver: %s\n" % (fmt % args))

    # -- plumbing

    def header_map(self):
        out = {}
        for k, v in self.headers.items():
            k = k.lower()
            out[k] = f"{out[k]}, {v}" if k in out else v
        return out

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def reply(self, status, body=b"", headers=None, content_type=None):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if status in (204, 304):
            # no body, and no Content-Length (RFC 9110 forbids it on 204)
            self.end_headers()
            self.wfile.flush()
            return
        if body and content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def reply_json(self, doc, status=200):
        self.reply(status, json.dumps(doc), content_type="application/json")

    def guarded(self, fn):
        try:
            fn()
        except BadRequest as e:
            self.reply(400, f"{e}\n", content_type="text/plain")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 -- a test double answers rather than dies
            try:
                self.reply(500, f"receiver error: {type(e).__name__}: {e}\n", content_type="text/plain")
            except OSError:
                self.close_connection = True

    # -- methods

    def do_POST(self):
        self.guarded(self.post)

    def do_PUT(self):
        self.guarded(self.post)

    def do_GET(self):
        self.guarded(self.get)

    def do_HEAD(self):
        self.guarded(self.get)

    def do_OPTIONS(self):
        self.guarded(self.options)

    def do_DELETE(self):
        self.guarded(self.other)

    def do_PATCH(self):
        self.guarded(self.other)

    def other(self):
        self.read_body()
        self.reply(405, "method not allowed\n", {"Allow": "POST, PUT, OPTIONS"}, "text/plain")

    def path_only(self):
        return urllib.parse.urlsplit(self.path).path

    def control_json(self):
        body = self.read_body()
        try:
            doc = json.loads(body) if body.strip() else {}
        except ValueError as e:
            raise BadRequest(f"invalid JSON: {e}")
        if not isinstance(doc, dict):
            raise BadRequest("a JSON object expected")
        return doc

    def get(self):
        path = self.path_only()
        self.read_body()
        if path == "/_received":
            self.reply_json(STATE.received())
        elif path == "/_script":
            with STATE.lock:
                doc = {"answers": [dict(a, times=left) for a, left in STATE.answers if left > 0],
                       "then": STATE.then}
            self.reply_json(doc)
        elif path == "/_handshake":
            with STATE.lock:
                doc = dict(STATE.handshake)
            self.reply_json(doc)
        elif path.startswith("/_"):
            self.reply(404, "unknown control path\n", content_type="text/plain")
        else:
            self.reply(405, "deliveries are POST or PUT\n", {"Allow": "POST, PUT, OPTIONS"}, "text/plain")

    def post(self):
        path = self.path_only()
        if not path.startswith("/_"):
            return self.delivery()
        if self.command != "POST":
            self.read_body()
            return self.reply(405, "control paths take POST\n", content_type="text/plain")
        if path == "/_script":
            doc = self.control_json()
            answers = doc.get("answers") or []
            if not isinstance(answers, list):
                raise BadRequest("answers must be an array")
            checked = [check_answer(a, f"answers[{i}]") for i, a in enumerate(answers)]
            then = check_answer(doc.get("then") or {"status": 200}, "then")
            then.pop("times")
            with STATE.lock:
                STATE.answers = [[a, a.pop("times")] for a in checked]
                STATE.then = then
            self.reply_json({"ok": True})
        elif path == "/_handshake":
            doc = self.control_json()
            origin = doc.get("allowed_origin", "*")
            rate = doc.get("allowed_rate")
            if origin is not None and not isinstance(origin, str):
                raise BadRequest("allowed_origin must be a string or null")
            if rate is not None and not isinstance(rate, (str, int)):
                raise BadRequest("allowed_rate must be a string, an integer or null")
            with STATE.lock:
                STATE.handshake = {"allowed_origin": origin,
                                   "allowed_rate": None if rate is None else str(rate)}
            self.reply_json({"ok": True})
        elif path == "/_reset":
            self.read_body()
            with STATE.lock:
                STATE.requests.clear()
                STATE.handshakes.clear()
                STATE.seq = 0
            self.reply_json({"ok": True})
        else:
            self.read_body()
            self.reply(404, "unknown control path\n", content_type="text/plain")

    def delivery(self):
        arrived = time.time()
        headers = self.header_map()
        body = self.read_body()
        entry = {"path": self.path, "method": self.command, "headers": headers, "at": arrived}
        try:
            mode, events = parse_delivery(headers, body)
        except Exception as e:  # noqa: BLE001 -- whatever the SDK raises, the request is bad
            entry.update(mode=delivery_mode(headers),
                         events=[], status=400, parse_error=f"{type(e).__name__}: {e}",
                         body=body[:BODY_SNIPPET].decode("utf-8", "replace"))
            STATE.record(entry, STATE.requests)
            return self.reply(400, f"not a CloudEvent: {e}\n", content_type="text/plain")
        answer = STATE.next_answer()
        if answer.get("delay_ms"):
            time.sleep(answer["delay_ms"] / 1000.0)
        entry.update(mode=mode, events=events, status=answer["status"])
        STATE.record(entry, STATE.requests)
        if VERBOSE:
            sys.stderr.write(f"receiver: {self.command} {self.path} {mode} "
                             f"{[e['id'] for e in events]} -> {answer['status']}\n")
        self.reply(answer["status"], answer.get("body", ""), answer.get("headers"), "text/plain")

    def options(self):
        headers = self.header_map()
        self.read_body()
        with STATE.lock:
            config = dict(STATE.handshake)
        entry = {"path": self.path, "method": "OPTIONS", "headers": headers, "at": time.time()}
        if "webhook-request-origin" not in headers:
            entry["status"] = 400
            STATE.record(entry, STATE.handshakes)
            return self.reply(400, "an abuse-protection handshake needs WebHook-Request-Origin\n",
                              content_type="text/plain")
        if config["allowed_origin"] is None:
            entry["status"] = 403
            STATE.record(entry, STATE.handshakes)
            return self.reply(403, "delivery refused\n", content_type="text/plain")
        out = {"WebHook-Allowed-Origin": config["allowed_origin"], "Allow": "POST"}
        if config["allowed_rate"] is not None:
            out["WebHook-Allowed-Rate"] = config["allowed_rate"]
        entry["status"] = 200
        STATE.record(entry, STATE.handshakes)
        self.reply(200, b"", out)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    global VERBOSE
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--verbose", action="store_true", help="log every request on stderr")
    a = p.parse_args()
    VERBOSE = a.verbose
    server = Server((a.host, a.port), Handler)
    sys.stdout.write(json.dumps({"port": server.server_address[1]}) + "\n")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
