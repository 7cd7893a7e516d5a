#!/usr/bin/env python3
"""The compose cluster under load and faults (CI runs it: .ci/run).

Builds the image, generates the nine nodes' configs and trust, starts the
compose cluster, runs a Black Friday load with the load tester (a container
on every region's network), and under that load:

1. `docker kill`s the us-east leader, waits for a new one, starts it again;
2. cuts eu-west off the WAN network, keeps it off, reconnects it;
3. replaces ap-south-3 by a node with an empty volume and a new id, which
   joins through `reservoir admin replace-node` and catches up;
4. rolls a restart through every node, moving leadership off it first.

Then the load ends and the load tester reads every acknowledged reservation
back (`--check-acknowledged`), checks no request failed with an error a retry
would not change, and that the audit balances; an audit through the CLI
must show zero drift. Everything it starts it stops (unless --keep).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
COMPOSE_FILE = os.path.join(HERE, "docker-compose.yml")
GENERATED = os.path.join(HERE, "generated")
TOPOLOGY = os.path.join(HERE, "topology.toml")
REGIONS = {
    "us-east": ["us-east-1", "us-east-2", "us-east-3"],
    "eu-west": ["eu-west-1", "eu-west-2", "eu-west-3"],
    "ap-south": ["ap-south-1", "ap-south-2", "ap-south-3"],
}
HOME = "us-east"
# The node that test step 3 replaces, and the id its replacement gets.
REPLACED = "ap-south-3"
REPLACEMENT_ID = 10
LOADTEST = "reservoir-loadtest-run"
# Seconds of load asked for: more than the faults take (about two to four
# minutes); the load is always ended by SIGINT once they are done, and each
# fault checks it still runs. Its eu-west spike (10x) would start at a third
# of it, so the faults run at the baseline rate.
LOAD_S = 1800
START = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - START:6.1f}s] {msg}", flush=True)


def run(cmd, check=True, capture=False, env=None, timeout=600, merge=True):
    """Runs a command; with capture, returns its stdout (and its stderr,
    with merge; without, stderr goes to ours)."""
    shown = " ".join(cmd)
    if not capture:
        log(f"$ {shown}")
    full_env = dict(os.environ, **(env or {}))
    p = subprocess.run(
        cmd,
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture and merge else None,
        text=True,
        timeout=timeout,
    )
    if check and p.returncode != 0:
        err = (p.stdout or "").strip()[-2000:] if capture else ""
        raise SystemExit(f"FAILED: {shown} exited {p.returncode} {err}")
    return p.stdout if capture else p.returncode


class Compose:
    def __init__(self, project, image):
        self.project = project
        self.image = image
        self.ids = {}

    def env(self):
        env = {"RESERVOIR_IMAGE": self.image, "COMPOSE_PROJECT_NAME": self.project}
        for service, node_id in self.ids.items():
            env["RESERVOIR_ID_" + service.upper().replace("-", "_")] = str(node_id)
        return env

    def __call__(self, *args, check=True, capture=False, timeout=600, merge=True):
        return run(
            ["docker-compose", "-f", COMPOSE_FILE, "-p", self.project, *args],
            check=check,
            capture=capture,
            env=self.env(),
            timeout=timeout,
            merge=merge,
        )

    def container(self, service):
        return f"reservoir-{service}"

    def network(self, name):
        return f"{self.project}_{name}"

    def volume(self, name):
        return f"{self.project}_{name}"

    def cli(self, *args, check=True):
        """`reservoir ARGS` in a throwaway container on every network."""
        return self(
            "run", "--rm", "--no-deps", "--entrypoint", "/usr/local/bin/reservoir", "loadtest",
            *args, check=check, capture=True, merge=False,
        )


def ip_of(container, network):
    out = run(
        ["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", container],
        capture=True,
    )
    nets = json.loads(out)
    return nets.get(network, {}).get("IPAddress") or None


def http_get(ip, path, timeout=2.0):
    try:
        with urllib.request.urlopen(f"http://{ip}:7002{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except Exception as e:  # refused, reset, timed out: not answering
        return None, str(e)


def node_status(compose, service, region):
    ip = ip_of(compose.container(service), compose.network(region))
    if not ip:
        return None
    code, body = http_get(ip, "/status")
    if code != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def wait_until(what, check, deadline_s):
    deadline = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"FAILED: {what} within {deadline_s} s")
        time.sleep(0.5)


def ready(compose, service, region):
    ip = ip_of(compose.container(service), compose.network(region))
    return bool(ip) and http_get(ip, "/readyz")[0] == 200


def wait_caught_up(compose, service, region, deadline_s=180):
    """Waits until `service` is ready and has applied its region group's log
    to within 64 entries of the group's leader (ready alone comes early: a
    restarted follower knows its leader from its saved vote)."""
    def caught_up():
        if not ready(compose, service, region):
            return False
        me = node_status(compose, service, region)
        if not me or me.get("applied_index") is None:
            return False
        leader = me.get("leader")
        for s in REGIONS[region]:
            st = node_status(compose, s, region)
            if st and st.get("node_id") == leader and st.get("role") == "leader":
                return (st.get("last_log_index") or 0) - me["applied_index"] <= 64
        return False

    wait_until(f"{service} to catch up", caught_up, deadline_s)
    wait_all_ready(compose)


def wait_all_ready(compose, deadline_s=120):
    def all_ready():
        return all(ready(compose, s, r) for r, nodes in REGIONS.items() for s in nodes)

    wait_until("every node ready", all_ready, deadline_s)
    log("every node is ready")


def leader_of(compose, region):
    """The service name of the region group's leader, per its nodes' /status."""
    for service in REGIONS[region]:
        st = node_status(compose, service, region)
        if st and st.get("role") == "leader":
            return service
    return None


def ledger_leader(compose):
    for service in REGIONS[HOME]:
        st = node_status(compose, service, HOME)
        ledger = (st or {}).get("ledger") or {}
        if ledger.get("role") == "leader":
            return service
    return None


def loadtest_running():
    out = run(["docker", "inspect", "-f", "{{.State.Running}}", LOADTEST], capture=True, check=False)
    return out.strip() == "true"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=os.environ.get("RESERVOIR_PROFILE", "debug"),
                    help="cargo profile of the binaries in the image [debug]")
    ap.add_argument("--no-build", action="store_true", help="use target/PROFILE's binaries as they are")
    ap.add_argument("--project", default="reservoir-test", help="compose project name")
    ap.add_argument("--rate", default="15", help="load tester baseline reserves/s per region")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = ap.parse_args()

    image = "reservoir:test"
    compose = Compose(args.project, image)
    binary = os.path.join(ROOT, "target", args.profile, "reservoir")

    # 1. The image, from this checkout.
    build = ["deploy/docker/binaries.sh", "--profile", args.profile, "--tag", "reservoir-binaries:test"]
    if args.no_build:
        build.append("--no-build")
    run(build)
    run(["docker", "build", "-q", "-f", "deploy/Dockerfile", "--build-arg",
         "BINARIES_IMAGE=reservoir-binaries:test", "-t", image, "deploy"])

    # 2. Configs and trust for the nine nodes and the replacement.
    subprocess.run(["rm", "-rf", GENERATED], check=True)
    run([binary, "deploy", "init", "--topology", TOPOLOGY, "--out", GENERATED])
    # The containers run as uid 10001; keys stay unreadable to others.
    if os.geteuid() == 0:
        run(["chown", "-R", "10001:10001", GENERATED])
    else:
        log("not root: making the generated keys readable by all so the containers can read them")
        run(["chmod", "-R", "a+rX", GENERATED])
    # Every config checked where it will run: in the image, with the files
    # mounted as the compose file mounts them.
    for f in sorted(os.listdir(os.path.join(GENERATED, "nodes"))):
        out = run(["docker", "run", "--rm", "-v", f"{GENERATED}:/etc/reservoir:ro", image,
                   "node", "--check-config", "--config", f"/etc/reservoir/nodes/{f}"], capture=True)
        log(out.strip())

    # A CI timeout's SIGTERM still cleans up (through the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("FAILED: terminated"))
    try:
        scenario(compose, args)
    except BaseException:
        # What the containers said last, to tell why.
        for name in [LOADTEST] + [compose.container(s) for nodes in REGIONS.values() for s in nodes]:
            out = run(["docker", "logs", "--tail", "15", name], capture=True, check=False)
            print(f"---- {name} (last lines)\n{out}", flush=True)
        raise
    finally:
        if args.keep:
            log(f"left running (project {args.project}); stop with: "
                f"docker-compose -f {COMPOSE_FILE} -p {args.project} down -v")
        else:
            run(["docker", "rm", "-f", LOADTEST], check=False, capture=True)
            compose("--profile", "load", "down", "-v", "--remove-orphans", check=False)


def scenario(compose, args):
    run(["docker", "rm", "-f", LOADTEST], check=False, capture=True)
    compose("--profile", "load", "down", "-v", "--remove-orphans", check=False)
    compose("up", "-d")
    wait_all_ready(compose)
    faults = []  # (what, unix s from, unix s to): every region must serve in each

    # The load: Black Friday at a rate a debug build on two cores carries,
    # until the faults are done (SIGINT ends the load early; the tester then
    # drains, reads the books and every acknowledged hold back).
    compose("--profile", "load", "run", "-d", "--name", LOADTEST, "loadtest",
            "black-friday", "--cluster", "/etc/reservoir/cluster.json",
            "--duration-s", str(LOAD_S), "--rate", args.rate, "--hold-ttl-ms", "5000",
            "--check-acknowledged", "--out", "/var/lib/reservoir/report")
    wait_until("the load to start",
               lambda: f"s/{LOAD_S}s]" in run(["docker", "logs", LOADTEST], capture=True, check=False)
               or not loadtest_running(), 180)
    if not loadtest_running():
        run(["docker", "logs", LOADTEST], check=False)
        raise SystemExit("FAILED: the load tester stopped before the faults")
    log("load running")
    time.sleep(5)

    def fault(what):
        """Checks the load still runs, and returns the fault's start time."""
        if not loadtest_running():
            raise SystemExit(f"FAILED: the load tester stopped before: {what}")
        log(f"fault: {what}")
        return time.time()

    # 1. Kill the us-east leader.
    t0 = fault("kill the us-east leader")
    old = wait_until("a us-east leader", lambda: leader_of(compose, "us-east"), 30)
    run(["docker", "kill", compose.container(old)])
    new = wait_until("a new us-east leader",
                     lambda: (lambda l: l if l and l != old else None)(leader_of(compose, "us-east")), 30)
    log(f"us-east leader {old} killed; {new} leads")
    compose("start", old)
    wait_caught_up(compose, old, "us-east")
    faults.append(("us-east leader killed and restarted", t0, time.time()))

    # 2. Cut eu-west off the WAN, and heal it: it serves its shoppers on.
    t0 = fault("cut eu-west off the WAN")
    wan = compose.network("wan")
    for s in REGIONS["eu-west"]:
        run(["docker", "network", "disconnect", wan, compose.container(s)])
    time.sleep(10)
    served = leader_of(compose, "eu-west")
    log(f"eu-west cut off the WAN for 10 s; its leader is {served}")
    if not served:
        raise SystemExit("FAILED: eu-west has no leader while cut off the WAN")
    faults.append(("eu-west cut off the WAN", t0, time.time()))
    for s in REGIONS["eu-west"]:
        # Both names the compose file gives it on the WAN.
        run(["docker", "network", "connect", "--alias", f"{s}.wan", "--alias", s, wan,
             compose.container(s)])
    wait_all_ready(compose)

    # 3. Replace ap-south-3 by an empty node with a new id.
    t0 = fault("replace ap-south-3 by an empty node")
    old_id = (node_status(compose, REPLACED, "ap-south") or {}).get("node_id")
    if old_id is None:
        raise SystemExit(f"FAILED: {REPLACED} does not say its node id")
    compose("rm", "-s", "-f", REPLACED)
    run(["docker", "volume", "rm", compose.volume(REPLACED)])
    compose.ids[REPLACED] = REPLACEMENT_ID
    compose("up", "-d", "--no-deps", REPLACED)
    out = compose.cli("replace-node", "--cluster", "/etc/reservoir/cluster.json",
                      "--addr", "ap-south-1.ap-south:7000", "--old", str(old_id),
                      "--id", str(REPLACEMENT_ID), "--address", f"{REPLACED}.ap-south:7001",
                      "--timeout-s", "120")
    log(f"replace-node: {out.strip()}")
    wait_caught_up(compose, REPLACED, "ap-south")
    faults.append(("ap-south-3 replaced", t0, time.time()))

    # 4. A rolling restart, leadership moved off each node first.
    t0 = fault("a rolling restart")
    for region, services in REGIONS.items():
        for s in services:
            fault(f"restart {s}")
            st = node_status(compose, s, region) or {}
            if st.get("role") == "leader":
                out = compose.cli("transfer-leader", "--cluster", "/etc/reservoir/cluster.json",
                                  "--addr", f"{s}.{region}:7000")
                log(f"transfer-leader off {s}: {out.strip()}")
            if ledger_leader(compose) == s:
                out = compose.cli("transfer-leader", "--cluster", "/etc/reservoir/cluster.json",
                                  "--addr", f"{s}.{region}:7000", "--group", "ledger")
                log(f"ledger transfer-leader off {s}: {out.strip()}")
            compose("restart", "-t", "15", s)
            wait_caught_up(compose, s, region)
    faults.append(("rolling restart", t0, time.time()))

    # The end: stop the load, let it drain and check.
    log("faults done; ending the load")
    time.sleep(5)
    if not loadtest_running():
        raise SystemExit("FAILED: the load tester stopped before the faults were done")
    run(["docker", "kill", "-s", "INT", LOADTEST])
    code = run(["docker", "wait", LOADTEST], capture=True, timeout=900).strip()
    logs = run(["docker", "logs", LOADTEST], capture=True, check=False)
    print("\n".join(l for l in logs.splitlines() if not l.startswith("[")), flush=True)
    if code != "0":
        raise SystemExit(f"FAILED: the load tester exited {code}")
    served_through(faults)
    audit = compose.cli("audit", "--cluster", "/etc/reservoir/cluster.json")
    print(audit, flush=True)
    problem = audit_problem(audit)
    if problem:
        raise SystemExit(f"FAILED: the audit: {problem}")
    log("PASSED: every acknowledged hold found, no request failed unretryably, audit balanced")


def served_through(faults):
    """Every region answered reserves OK during every fault, per the load
    tester's report (its per-second timeline)."""
    with tempfile.TemporaryDirectory() as tmp:
        run(["docker", "cp", f"{LOADTEST}:/var/lib/reservoir/report/report.json", tmp], capture=True)
        report = json.load(open(os.path.join(tmp, "report.json")))
    start_s = report["started_unix_ms"] / 1000
    for what, t0, t1 in faults:
        for region, seconds in report["timeline"].items():
            ok = sum(r["ok"][0] for r in seconds if t0 - start_s <= r["t_s"] <= t1 - start_s)
            log(f"{what} ({t1 - t0:.0f} s): {region} reserved OK {ok} times")
            if ok == 0:
                raise SystemExit(f"FAILED: {region} served no reserve during: {what}")


def audit_problem(audit):
    """What is wrong with `reservoir audit`'s balance sheet, or None: the
    verdict must be `balanced`, no region missing, every DRIFT and
    LEDGER_DRIFT cell 0."""
    lines = [l for l in audit.splitlines() if l.strip()]
    if not lines or not lines[0].startswith("audit at ") or not lines[0].endswith(": balanced"):
        return f"verdict: {lines[0] if lines else '(nothing)'}"
    if any(l.startswith("missing regions") for l in lines):
        return "regions missing"
    columns, rows = None, 0
    for line in lines[1:]:
        cells = line.split()
        if cells and cells[0] == "SKU":
            columns = [i for i, c in enumerate(cells) if c in ("DRIFT", "LEDGER_DRIFT")]
            continue
        if columns is None:
            continue
        rows += 1
        for i in columns:
            if i >= len(cells) or cells[i] != "0":
                return f"drift in: {line}"
    return None if rows else "no SKU rows"


if __name__ == "__main__":
    main()
