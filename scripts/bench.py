#!/usr/bin/env python3
"""devserver's benchmark: each figure a ratio against a baseline measured
side by side in the same run, as medians of several runs, because the
machine is shared and noisy. Run it through scripts/bench.sh.

Every repository, server and state directory is made in a temporary
directory and removed at the end. Servers listen on 127.0.0.1 only.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

PYTHON = sys.executable


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def timed(cmd, **kw):
    start = time.perf_counter()
    run(cmd, **kw)
    return time.perf_counter() - start


def median_of(fn, n):
    return statistics.median(fn() for _ in range(n))


class Bench:
    def __init__(self, devserver, scale):
        self.devserver = devserver
        self.scale = scale
        self.tmp = tempfile.mkdtemp(prefix="devserver-bench.")
        self.rows = []

    # -- set-up ---------------------------------------------------------

    def repo(self, name, files=10, command=None):
        root = os.path.join(self.tmp, name)
        os.makedirs(root)
        env = self.git_env()
        run(["git", "init", "-q", "-b", "main"], cwd=root, env=env)
        for i in range(files):
            sub = os.path.join(root, f"d{i % 50}")
            os.makedirs(sub, exist_ok=True)
            with open(os.path.join(sub, f"f{i}.txt"), "w") as f:
                f.write(f"file {i}\n")
        with open(os.path.join(root, "index.html"), "w") as f:
            f.write("<h1>bench</h1>\n")
        command = command or f"exec {PYTHON} -m http.server {{port}} --bind 127.0.0.1"
        with open(os.path.join(root, "devserver.yaml"), "w") as f:
            f.write(f"command: '{command}'\nhealth:\n  timeout: 60s\nstop:\n  grace: 5s\nports:\n  range: 21000-23999\n")
        run(["git", "add", "-A"], cwd=root, env=env)
        run(["git", "commit", "-q", "-m", "bench"], cwd=root, env=env)
        return root

    def git_env(self):
        env = dict(os.environ)
        env.update(
            GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.invalid",
            GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.invalid",
            GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1",
        )
        return env

    def ds(self, home, root, *args):
        env = self.git_env()
        env["DEVSERVER_HOME"] = home
        env.pop("NO_COLOR", None)
        return [self.devserver, "-C", root, "-q", *args], env

    def ds_run(self, home, root, *args):
        cmd, env = self.ds(home, root, *args)
        return run(cmd, env=env).stdout.strip()

    def ds_time(self, home, root, *args):
        cmd, env = self.ds(home, root, *args)
        return timed(cmd, env=env)

    def spawn_many(self, home, root, agents, at_once=16):
        for i in range(0, len(agents), at_once):
            batch = []
            for agent in agents[i:i + at_once]:
                cmd, env = self.ds(home, root, "spawn", "--agent", agent)
                batch.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            for p in batch:
                if p.wait() != 0:
                    raise SystemExit(f"spawn failed: {p.stderr.read().decode()}")

    def stop_all(self, home, root):
        cmd, env = self.ds(home, root, "stop", "--all", "--force")
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def report(self, figure, ours, base, ratio, target, ok):
        self.rows.append((figure, ours, base, ratio, target, ok))
        mark = "ok" if ok else "MISSED"
        print(f"{figure:<16} {ours:<24} {base:<28} {ratio:<14} {target:<26} {mark}", flush=True)

    # -- figures --------------------------------------------------------

    def url_and_list(self):
        n = self.scale["instances"]
        runs = self.scale["runs"]
        home = os.path.join(self.tmp, "state-many")
        root = self.repo("many")
        agents = [f"a{i}" for i in range(n)]
        self.spawn_many(home, root, agents)

        url = median_of(lambda: self.ds_time(home, root, "url", "--agent", agents[n // 2]), runs)
        git = median_of(lambda: timed(["git", "-C", root, "rev-parse", "HEAD"]), runs)
        self.report("url latency", f"{url * 1000:.1f} ms ({n} inst.)", f"git rev-parse {git * 1000:.1f} ms",
                    f"{url / git:.2f}x", "ratio <= 3", url / git <= 3)

        many = median_of(lambda: self.ds_time(home, root, "list", "--json"), runs)
        home1 = os.path.join(self.tmp, "state-one")
        root1 = self.repo("one")
        self.spawn_many(home1, root1, ["solo"])
        one = median_of(lambda: self.ds_time(home1, root1, "list", "--json"), runs)
        self.report("list latency", f"{many * 1000:.1f} ms ({n} inst.)", f"1 instance {one * 1000:.1f} ms",
                    f"{many / one:.2f}x", "ratio <= 3, < 100 ms", many / one <= 3 and many < 0.1)

        self.memory(home, root)
        self.stop_all(home, root)
        self.stop_all(home1, root1)

    def memory(self, home, root):
        cmd, env = self.ds(home, root, "list", "--json")
        cli = peak_rss_kb(cmd, env)
        registry = os.path.join(home, "registry.json")
        import json
        with open(registry) as f:
            entries = json.load(f)["instances"]
        monitors = [e["monitor"]["pid"] for e in entries if e.get("monitor")]
        rss = [vm_hwm_kb(pid) for pid in monitors]
        rss = [r for r in rss if r]
        monitor = statistics.median(rss) if rss else 0
        self.report("memory", f"CLI {cli / 1024:.1f} MB", f"monitor {monitor / 1024:.1f} MB each",
                    "-", "< 15 MB and < 8 MB", cli < 15 * 1024 and monitor < 8 * 1024)

    def spawn_overhead(self):
        runs = self.scale["spawn_runs"]
        home = os.path.join(self.tmp, "state-spawn")
        root = self.repo("big", files=self.scale["files"])
        port = 24500
        ours, base = [], []
        for i in range(runs):
            agent = f"s{i}"
            ours.append(self.ds_time(home, root, "spawn", "--agent", agent))
            self.ds_run(home, root, "stop", "--agent", agent, "--remove", "--force")
            base.append(self.baseline_spawn(root, f"plain{i}", port))
        o, b = statistics.median(ours), statistics.median(base)
        self.report("spawn overhead", f"{o * 1000:.0f} ms", f"shell script {b * 1000:.0f} ms",
                    f"{o / b:.2f}x", f"ratio <= 1.15 ({self.scale['files']} files)", o / b <= 1.15)

    def baseline_spawn(self, root, name, port):
        """git worktree add, start the same server, poll until it answers."""
        path = os.path.join(self.tmp, "plain", name)
        script = f"""
set -e
git -C {root} worktree add -q -b plain/{name} {path}
cd {path}
setsid {PYTHON} -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 &
echo $! > {path}.pid
until curl -s -o /dev/null http://127.0.0.1:{port}/; do sleep 0.025; done
"""
        took = timed(["bash", "-c", script], env=self.git_env())
        with open(f"{path}.pid") as f:
            pid = int(f.read())
        os.kill(pid, signal.SIGTERM)
        wait_gone(pid)
        run(["git", "-C", root, "worktree", "remove", "--force", path], env=self.git_env())
        run(["git", "-C", root, "branch", "-q", "-D", f"plain/{name}"], env=self.git_env())
        return took

    def parallel_spawn(self):
        n = self.scale["parallel"]
        slow = f"sleep 1; exec {PYTHON} -m http.server {{port}} --bind 127.0.0.1"
        results = {}
        for count in (1, n):
            times = []
            for r in range(self.scale["parallel_runs"]):
                home = os.path.join(self.tmp, f"state-par-{count}-{r}")
                root = self.repo(f"par-{count}-{r}", command=slow)
                start = time.perf_counter()
                self.spawn_many(home, root, [f"p{i}" for i in range(count)], at_once=count)
                times.append(time.perf_counter() - start)
                self.stop_all(home, root)
            results[count] = statistics.median(times)
        ratio = results[n] / results[1]
        self.report("parallel spawn", f"{n} at once {results[n]:.2f} s", f"1 agent {results[1]:.2f} s",
                    f"{ratio:.2f}x", "ratio <= 2", ratio <= 2)

    def stop_latency(self):
        runs = self.scale["runs"] // 2 or 1
        home = os.path.join(self.tmp, "state-stop")
        root = self.repo("stop")
        ours = []
        for i in range(runs):
            self.ds_run(home, root, "spawn", "--agent", "st")
            ours.append(self.ds_time(home, root, "stop", "--agent", "st"))
        base = []
        for i in range(runs):
            p = subprocess.Popen([PYTHON, "-m", "http.server", "24600", "--bind", "127.0.0.1"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            wait_answers(24600)
            start = time.perf_counter()
            os.killpg(p.pid, signal.SIGTERM)
            p.wait()
            base.append(time.perf_counter() - start)
        o, b = statistics.median(ours), statistics.median(base)
        added = (o - b) * 1000
        self.report("stop latency", f"{o * 1000:.1f} ms", f"tree's own exit {b * 1000:.1f} ms",
                    f"+{added:.1f} ms", "added < 50 ms", added < 50)

    def cleanup(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def peak_rss_kb(cmd, env):
    """Peak RSS of one run of a command, in KiB, measured by GNU time: a
    child forked from this Python would count Python's own pages too."""
    if not os.path.exists("/usr/bin/time"):
        return 0
    out = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, check=True)
    return int(out.stderr.strip().splitlines()[-1])


def vm_hwm_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_gone(pid, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


def wait_answers(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except OSError:
            time.sleep(0.01)
    raise SystemExit(f"nothing answered on {port}")


SCALES = {
    "full": dict(instances=100, runs=30, files=5000, spawn_runs=5, parallel=16, parallel_runs=3),
    "smoke": dict(instances=4, runs=4, files=200, spawn_runs=1, parallel=2, parallel_runs=1),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devserver", required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script works, not the figures")
    args = parser.parse_args()
    scale = SCALES["smoke" if args.smoke else "full"]

    bench = Bench(args.devserver, scale)
    print(f"{'figure':<16} {'devserver':<24} {'baseline':<28} {'ratio':<14} {'target':<26} result")
    try:
        bench.url_and_list()
        bench.spawn_overhead()
        bench.parallel_spawn()
        bench.stop_latency()
    finally:
        bench.cleanup()
    missed = [row[0] for row in bench.rows if not row[5]]
    if missed and not args.smoke:
        print(f"missed: {', '.join(missed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
