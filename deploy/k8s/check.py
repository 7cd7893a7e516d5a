#!/usr/bin/env python3
"""Checks the rendered Kubernetes manifests: renders them (render.py), then
for every pod of every StatefulSet lays out what the pod would see (its
region's ConfigMap at /etc/reservoir/nodes, its Secret at
/etc/reservoir/tls, its environment with $(POD_INDEX) expanded) and runs
`reservoir node --check-config` in the node image, as the pod would start.
Every config must pass, naming the node id the ordinal stands for; a broken
config (a bad peer address) must be refused with the field named. Also
checks the manifests' shape: probes on gRPC health, a PodDisruptionBudget
per region, a headless Service publishing not-ready addresses.

    deploy/k8s/check.py --reservoir target/debug/reservoir --image reservoir:test
"""

import argparse
import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import render  # noqa: E402


def fail(msg):
    sys.exit(f"FAILED: {msg}")


def pod_env(container, ordinal):
    """The container's environment as the kubelet would set it for pod
    `ordinal` ($(VAR) references expanded)."""
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == \
                "metadata.labels['apps.kubernetes.io/pod-index']":
            env[e["name"]] = str(ordinal)
        else:
            fail(f"env {e['name']}: a source this check does not know")
    return env


def check_config(image, root, env, mounts):
    args = ["docker", "run", "--rm"]
    for host, inside in mounts:
        args += ["-v", f"{host}:{inside}:ro"]
    for k, v in env.items():
        args += ["-e", f"{k}={v}"]
    args += [image, "node", "--check-config"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    return p.returncode, (p.stdout + p.stderr).strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reservoir", required=True, help="the reservoir binary (for deploy init)")
    ap.add_argument("--image", default="reservoir:test", help="the node image [reservoir:test]")
    args = ap.parse_args()

    out = tempfile.mkdtemp(prefix="reservoir-k8s-")
    try:
        path = render.render(args.reservoir, os.path.join(HERE, "topology.toml"), out, render.IMAGE)
        docs = list(yaml.safe_load_all(open(path)))
        by_kind = {}
        for d in docs:
            by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        topology = render.load_topology(os.path.join(HERE, "topology.toml"))
        checked = 0
        for region, ids in render.regions_of(topology):
            sts = by_kind["StatefulSet"].get(region) or fail(f"no StatefulSet {region}")
            svc = by_kind["Service"].get(region) or fail(f"no Service {region}")
            if svc["spec"].get("clusterIP") != "None" or not svc["spec"].get("publishNotReadyAddresses"):
                fail(f"Service {region} is not headless with not-ready addresses published")
            if f"reservoir-{region}" not in by_kind["PodDisruptionBudget"]:
                fail(f"no PodDisruptionBudget for {region}")
            spec = sts["spec"]["template"]["spec"]
            container = spec["containers"][0]
            if "grpc" not in container.get("readinessProbe", {}):
                fail(f"{region}: the readiness probe is not gRPC health")
            volumes = {v["name"]: v for v in spec["volumes"]}
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            cm = by_kind["ConfigMap"][volumes["config"]["configMap"]["name"]]
            secret = by_kind["Secret"][volumes["tls"]["secret"]["secretName"]]
            # What every pod of the region sees.
            pod_root = os.path.join(out, "pods", region)
            nodes_dir = os.path.join(pod_root, "nodes")
            tls_dir = os.path.join(pod_root, "tls")
            os.makedirs(nodes_dir)
            os.makedirs(tls_dir)
            for name, text in cm["data"].items():
                with open(os.path.join(nodes_dir, name), "w") as f:
                    f.write(text)
            for name, b64 in secret["data"].items():
                with open(os.path.join(tls_dir, name), "wb") as f:
                    f.write(base64.b64decode(b64))
            if os.geteuid() == 0:
                subprocess.run(["chown", "-R", "10001:10001", pod_root], check=True)
            else:
                subprocess.run(["chmod", "-R", "a+rX", pod_root], check=True)
            volume_mounts = [(nodes_dir, mounts["config"]), (tls_dir, mounts["tls"])]
            for ordinal in range(spec and sts["spec"]["replicas"]):
                env = pod_env(container, ordinal)
                code, said = check_config(args.image, pod_root, env, volume_mounts)
                want = f"config OK: node {ids[ordinal]} (region {region})"
                if code != 0 or not said.startswith(want):
                    fail(f"{region}-{ordinal}: exit {code}: {said}")
                print(f"{region}-{ordinal}: {said}")
                checked += 1
        # A broken config is refused, naming the field.
        region, ids = render.regions_of(topology)[0]
        broken_dir = os.path.join(out, "pods", region, "nodes")
        name = f"{region}-0.toml"
        text = open(os.path.join(broken_dir, name)).read()
        bad = re.sub(r'peer_advertise = "[^"]*"', 'peer_advertise = "us_east-0.bad:7001"', text)
        if bad == text:
            fail("could not break the config (no peer_advertise line)")
        with open(os.path.join(broken_dir, "broken.toml"), "w") as f:
            f.write(bad)
        if os.geteuid() == 0:
            subprocess.run(["chown", "10001:10001", os.path.join(broken_dir, "broken.toml")], check=True)
        else:
            os.chmod(os.path.join(broken_dir, "broken.toml"), 0o644)
        code, said = check_config(
            args.image, None, {"RESERVOIR_CONFIG": "/etc/reservoir/nodes/broken.toml"},
            [(broken_dir, "/etc/reservoir/nodes"), (os.path.join(out, "pods", region, "tls"), "/etc/reservoir/tls")],
        )
        if code != 2 or "peer_advertise" not in said:
            fail(f"a broken config was not refused with its field named: exit {code}: {said}")
        print(f"broken config refused: {said}")
        print(f"PASSED: {checked} pod configs accepted, a broken one refused")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
