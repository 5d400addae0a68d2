"""A local HTTP server on 127.0.0.1 for the weights tests: serves given bytes by path, counts requests,
and can truncate a body, delay a response or answer 404."""

import collections
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WeightsServer:
    """`files` maps URL paths to bytes; `hits` counts GETs per path; paths in `truncate` send half of
    their body under the full Content-Length; `delay` seconds pass before each answer."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.hits: collections.Counter = collections.Counter()
        self.truncate: set[str] = set()
        self.delay = 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] += 1
                time.sleep(server.delay)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.truncate:
                    self.wfile.write(body[:len(body) // 2])
                    self.close_connection = True
                else:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.root + path

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
