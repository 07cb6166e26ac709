#!/usr/bin/env python3
"""How one review's cost grows with its size: CPU time, the server's peak memory, the answer.

For each shape (many containers, labels, invalid labels, invalid expressions, quantities,
tolerations) and size, an AdmissionReview is generated and
  - judged by `daemonset-webhook review` (the same engine as the server): CPU time (user+sys of
    the process, minus that of a trivial review) and the answer's size;
  - sent once to a fresh server (`serve`), whose peak resident memory (VmHWM) is read before
    and after: the growth is what one review of that size costs the server at its peak.
Reviews above the 7 MiB body cap are skipped. Prints a Markdown table.

usage (from the project's root): python3 benches/scaling.py [SIZE ...]
needs: a release build (cargo build --release), curl, openssl.
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

BIN = os.path.join("target", "release", "daemonset-webhook")
MAX_BODY = 7 * 1024 * 1024


def review(pod_spec, selector=None, labels=None):
    labels = labels if labels is not None else {"app": "agent"}
    selector = selector if selector is not None else {"matchLabels": {"app": "agent"}}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "scaling",
            "kind": {"group": "apps", "version": "v1", "kind": "DaemonSet"},
            "resource": {"group": "apps", "version": "v1", "resource": "daemonsets"},
            "name": "agent",
            "namespace": "default",
            "operation": "CREATE",
            "object": {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": {"name": "agent", "namespace": "default"},
                "spec": {
                    "selector": selector,
                    "template": {"metadata": {"labels": labels}, "spec": pod_spec},
                },
            },
        },
    }


def containers(n):
    half = n // 2
    return review({
        "containers": [{"name": f"c{i:06d}", "image": "pause:3.10"} for i in range(n - half)],
        "initContainers": [{"name": f"i{i:06d}", "image": "pause:3.10"} for i in range(half)],
    })


def labels(n):
    many = {f"label-{i:06d}": "v" for i in range(n)}
    return review({"containers": [{"name": "c", "image": "x"}]}, {"matchLabels": many}, many)


def invalid_labels(n):
    many = {f"-bad{i:06d}": "v" for i in range(n)}
    return review({"containers": [{"name": "c", "image": "x"}]}, {"matchLabels": many})


def invalid_expressions(n):
    expressions = [{"key": f"k{i:06d}", "operator": "in", "values": ["v"]} for i in range(n)]
    return review({"containers": [{"name": "c", "image": "x"}]}, {"matchExpressions": expressions})


def quantities(n):
    limits = {f"example.com/r{i:06d}": "1" for i in range(n)}
    return review({"containers": [{"name": "c", "image": "x", "resources": {"limits": limits}}]})


def tolerations(n):
    return review({
        "containers": [{"name": "c", "image": "x"}],
        "tolerations": [{"key": f"k{i:06d}", "operator": "Exists"} for i in range(n)],
    })


SHAPES = [
    ("containers", containers),
    ("labels", labels),
    ("invalid labels", invalid_labels),
    ("invalid expressions", invalid_expressions),
    ("quantities", quantities),
    ("tolerations", tolerations),
]


def cpu_of(path):
    """User+sys seconds of `review FILE`, and the answer's size."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([BIN, "review", path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, len(done.stdout)


def vm_hwm(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class Server:
    def __init__(self, work):
        self.work = work
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", f"{work}/tls.key", "-out", f"{work}/tls.crt"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def peak_growth(self, path, warm_up):
        """Peak RSS growth of a fresh server answering the review at `path` once, after it
        has answered `warm_up` (a small review: buffers and caches any review needs are then
        in place, and the growth is what this review's size costs)."""
        log = open(f"{self.work}/serve.log", "w")
        server = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0",
                                   "--tls-cert", f"{self.work}/tls.crt",
                                   "--tls-key", f"{self.work}/tls.key", "--log-format", "json"],
                                  stdout=subprocess.DEVNULL, stderr=log)
        try:
            port = None
            for _ in range(200):
                with open(f"{self.work}/serve.log") as text:
                    for line in text:
                        if "listening on https://" in line:
                            port = line.split("listening on https://127.0.0.1:")[1].split('"')[0]
                if port:
                    break
                time.sleep(0.02)
            base = f"https://127.0.0.1:{port}"
            for _ in range(3):
                subprocess.run(["curl", "-s", "-o", "/dev/null", "--cacert", f"{self.work}/tls.crt",
                                "-H", "Content-Type: application/json", "--data-binary",
                                f"@{warm_up}", f"{base}/mutate"], check=True)
            before = vm_hwm(server.pid)
            subprocess.run(["curl", "-s", "-o", "/dev/null", "--cacert", f"{self.work}/tls.crt",
                            "-H", "Content-Type: application/json", "--data-binary", f"@{path}",
                            f"{base}/mutate"], check=True)
            return vm_hwm(server.pid) - before
        finally:
            server.terminate()
            server.wait()
            log.close()


def main():
    sizes = [int(s) for s in sys.argv[1:]] or [10_000, 25_000, 50_000, 100_000, 200_000]
    work = tempfile.mkdtemp(prefix="scaling.")
    server = Server(work)
    trivial = f"{work}/trivial.json"
    with open(trivial, "w") as out:
        json.dump(containers(1), out)
    startup = min(cpu_of(trivial)[0] for _ in range(5))
    print("| shape | n | body | CPU | CPU per MiB | peak memory growth | growth / body | answer | answer / body |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, make in SHAPES:
        for n in sizes:
            path = f"{work}/review.json"
            with open(path, "w") as out:
                json.dump(make(n), out, separators=(",", ":"))
            body = os.path.getsize(path)
            if body > MAX_BODY:
                continue
            cpu = max(0.0, min(cpu_of(path)[0] for _ in range(3)) - startup)
            _, answer = cpu_of(path)
            growth = server.peak_growth(path, trivial)
            mib = body / 2**20
            answer_text = f"{answer / 2**20:.2f} MiB" if answer > 2**20 else f"{answer / 1024:.0f} KiB"
            print(f"| {name} | {n:,} | {mib:.2f} MiB | {cpu * 1000:.0f} ms | {cpu * 1000 / mib:.0f} ms "
                  f"| {growth / 2**20:.1f} MiB | {growth / body:.1f}x | {answer_text} "
                  f"| {answer / body:.2f}x |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
