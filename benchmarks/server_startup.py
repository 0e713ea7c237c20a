"""Benchmark: time from `sweep server` start to a healthy /health, and the RSS of its process tree."""
import os, signal, socket, subprocess, sys, tempfile, time
from pathlib import Path
import requests

def tree(root):
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except Exception:
                pass
    out, grew = {root}, True
    while grew:
        more = {p for p, pp in parents.items() if pp in out} - out
        out |= more; grew = bool(more)
    return out

def rss_kb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except Exception:
        pass
    return 0

for run in range(3):
    tmp = Path(tempfile.mkdtemp())
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "sweep", "server", "--port", str(port)], cwd=tmp,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.1)
    t = time.monotonic() - t0
    time.sleep(3)
    total = sum(rss_kb(x) for x in tree(p.pid))
    print(f"run {run}: healthy after {t:.1f} s; process tree RSS {total/1024/1024:.2f} GiB")
    os.killpg(p.pid, signal.SIGINT); p.wait(60)
