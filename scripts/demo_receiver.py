#!/usr/bin/env python3
"""The webhook `make run` delivers the demo's invalid events to (resources/demo.yaml).

Prints one line per CloudEvent it receives (binary mode: the ce-* headers and the body; structured
and batch mode: the JSON) and answers 204. Standard library only.
Usage: demo_receiver.py PORT
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("application/cloudevents"):
            events = json.loads(body)
            for e in events if isinstance(events, list) else [events]:
                print(f"{e.get('id')} {e.get('type')} validation={e.get('validation')}: {json.dumps(e.get('data'))}", flush=True)
        else:
            attrs = {k[3:].lower(): unquote(v) for k, v in self.headers.items() if k.lower().startswith("ce-")}
            print(f"{attrs.get('id')} {attrs.get('type')} validation={attrs.get('validation')} "
                  f"errors={attrs.get('validationerrors')}: {body.decode('utf-8', 'replace')}", flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
