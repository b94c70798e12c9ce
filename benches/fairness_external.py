"""Scenario 10 (fairness) against receivers that are not ours, for
docs/benchmarks.md section 10:

    python3 benches/fairness_external.py BIN DATABASE_URL HANGING CONFIG_PATH

BIN is a release build of notification-reconciler, DATABASE_URL an empty
database (the script migrates it), HANGING 1 to add the hanging endpoint with
10,000 due deliveries (0: the healthy endpoint alone), CONFIG_PATH where to
write the config. psql must be on PATH. Everything listens on 127.0.0.1.

Fairness measured against receivers that are not ours: Python's
http.server (ThreadingHTTPServer) as the healthy endpoint (records arrival
time) and as the hanging one (never answers). Producer: psql, enqueue_event
at 100/s. Prints start-up (daemon launch -> first receipt of an event due
before launch) and the healthy endpoint's enqueue -> receipt p50/p99."""
import http.server, json, os, subprocess, sys, threading, time

B, URL, hanging = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
PSQL = ["psql", URL, "-qAt", "-v", "ON_ERROR_STOP=1"]
arrivals = []

class Healthy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        at = time.time()
        body = self.rfile.read(int(self.headers["content-length"]))
        arrivals.append((at, json.loads(body)["data"].get("t")))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass

hung = []

class Hang(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        hung.append(time.time())
        time.sleep(3600)
    def log_message(self, *a): pass

def serve(handler):
    s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    s.daemon_threads = True
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s.server_address[1]

hp, dp = serve(Healthy), serve(Hang)
env = dict(os.environ, DATABASE_URL=URL)
cfg = sys.argv[4]
open(cfg, "w").write(f'''[database]
url = "x"
pool_size = 18
[reconciler]
workers = 16
interval = "15s"
[delivery]
timeout = "3s"
allow_networks = ["127.0.0.0/8"]
''')
run = lambda *a: subprocess.run([B, "--config", cfg, *a], env=env, check=True,
                                capture_output=True, text=True).stdout.strip()
run("migrate")
h = run("channel", "create", "--namespace", "acme", "--name", "healthy", "--url", f"http://127.0.0.1:{hp}/")
run("rule", "create", "--namespace", "acme", "--name", "h", "--event-type", "healthy", "--channel", h)
if hanging:
    dc = run("channel", "create", "--namespace", "acme", "--name", "dead", "--url", f"http://127.0.0.1:{dp}/")
    run("rule", "create", "--namespace", "acme", "--name", "d", "--event-type", "dead", "--channel", dc)
    subprocess.run(PSQL + ["-c", "SELECT count(*) FROM (SELECT notification.enqueue_event('acme','dead','{}') FROM generate_series(1,10000)) x"], check=True, capture_output=True)
# One healthy event due before the daemon starts: start-up to its receipt.
subprocess.run(PSQL + ["-c", "SELECT notification.enqueue_event('acme','healthy','{\"t\": 0}')"], check=True, capture_output=True)
launched = time.time()
daemon = subprocess.Popen([B, "--config", cfg, "run"], env=env, stderr=subprocess.PIPE, text=True)
while not arrivals:
    time.sleep(0.001)
startup = (arrivals[0][0] - launched) * 1000
time.sleep(1.0 if not hanging else 0.5)
arrivals.clear()
p = subprocess.Popen(PSQL, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
start = time.time()
for i in range(1000):
    wait = start + i / 100 - time.time()
    if wait > 0:
        time.sleep(wait)
    p.stdin.write("SELECT notification.enqueue_event('acme','healthy', jsonb_build_object('t', extract(epoch FROM clock_timestamp())::float8));\n")
    p.stdin.flush()
p.stdin.close(); p.wait()
deadline = time.time() + 60
while len(arrivals) < 1000 and time.time() < deadline:
    time.sleep(0.01)
daemon.terminate(); daemon.wait(timeout=30)
lat = sorted((at - t) * 1000 for at, t in arrivals)
pct = lambda q: lat[max(1, int(len(lat) * q + 0.999999)) - 1]
print(f"hanging={hanging} hanging endpoint requests={len(hung)} received={len(lat)} startup_to_first={startup:.0f} ms p50={pct(0.5):.1f} ms p99={pct(0.99):.1f} ms")
