"""What the benchmark scripts in contrib/ share: start hotdog on a configuration (ports 0) and
learn its ports from its log, read its counters, and its memory."""

import json
import os
import re
import subprocess
import tempfile
import time
import urllib.request


class Hotdog:
    """hotdog running `config` (YAML text) whose listener and status server ask for port 0."""

    def __init__(self, binary, config):
        self.dir = tempfile.mkdtemp(prefix="hotdog-bench-")
        path = os.path.join(self.dir, "hotdog.yml")
        with open(path, "w") as f:
            f.write(config)
        self.log = open(os.path.join(self.dir, "hotdog.log"), "w+")
        self.process = subprocess.Popen(
            [binary, "-c", path],
            stderr=self.log,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn,hotdog=info"},
        )
        self.pid = self.process.pid
        deadline = time.time() + 30
        listen = status = None
        text = ""
        while time.time() < deadline and not (listen and status):
            self.log.seek(0)
            text = self.log.read()
            m = re.search(r"listening on (?:tcp|tls|relp|udp) 127\.0\.0\.1:(\d+)", text)
            listen = m and int(m.group(1))
            m = re.search(r"status server on http://127\.0\.0\.1:(\d+)", text)
            status = m and int(m.group(1))
            time.sleep(0.1)
        if not (listen and status):
            self.stop()
            raise SystemExit("hotdog did not start:\n" + text)
        self.addr = ("127.0.0.1", listen)
        self.status = status

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status}{path}", timeout=30) as r:
            return r.read()

    def stats(self):
        return json.loads(self.get("/stats"))["stats"]

    def wait_stat(self, name, ok, timeout=120):
        deadline = time.time() + timeout
        value = None
        while time.time() < deadline:
            value = self.stats().get(name, 0)
            if ok(value):
                return value
            time.sleep(0.2)
        raise SystemExit(f"{name} never got there (last {value})")

    def rss_mb(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.stop()
