#!/usr/bin/env python3
"""Renders Reservoir's Kubernetes manifests: three regions, each a StatefulSet
of three nodes behind a headless Service, with a PodDisruptionBudget, probes
on the nodes' gRPC health, and the node configs and trust in a ConfigMap and
a Secret per region.

The configs, certificates and API keys come from `reservoir deploy init`
with deploy/k8s/topology.toml (node names are the pods' stable DNS names,
`us-east-0.us-east.reservoir.svc.cluster.local`); this script packs them
into the manifests. A pod finds its config by its ordinal
(`apps.kubernetes.io/pod-index`, Kubernetes 1.28+).

    deploy/k8s/render.py --reservoir target/release/reservoir --out deploy/k8s/rendered
    kubectl apply -f deploy/k8s/rendered/reservoir.yaml

Writes OUT/reservoir.yaml (every manifest), OUT/generated/ (what deploy init
wrote: keep it, it holds the CA key) and prints what it wrote.
"""

import argparse
import base64
import os
import subprocess
import sys

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

HERE = os.path.dirname(os.path.abspath(__file__))
NAMESPACE = "reservoir"
IMAGE = "reservoir:local"
# Node ids by region, in ordinal order: the topology's order.
PORTS = {"client": 7000, "peer": 7001, "http": 7002}


def block(text, indent):
    """A YAML literal block scalar of `text`, indented."""
    pad = " " * indent
    return "|\n" + "".join(pad + line + "\n" for line in text.splitlines())


def load_topology(path):
    with open(path, "rb") as f:
        return tomllib.load(f)


def regions_of(topology):
    """[(region, [node ids in ordinal order])] from the topology file."""
    out = []
    for region in topology["regions"]:
        out.append((region["name"], [n["id"] for n in region["nodes"]]))
    return out


def config_map(region, ids, generated):
    lines = [
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        f"  name: reservoir-{region}-config",
        f"  namespace: {NAMESPACE}",
        "  labels: {app.kubernetes.io/name: reservoir, reservoir/region: " + region + "}",
        "data:",
    ]
    for ordinal, node_id in enumerate(ids):
        with open(os.path.join(generated, "nodes", f"node-{node_id}.toml")) as f:
            text = f.read()
        lines.append(f"  {region}-{ordinal}.toml: " + block(text, 4).rstrip("\n"))
    return "\n".join(lines) + "\n"


def secret(region, ids, generated):
    """The CA and the region's node certificates and keys."""
    files = {"ca.pem": os.path.join(generated, "tls", "ca.pem")}
    for node_id in ids:
        for ext in ("pem", "key"):
            files[f"node-{node_id}.{ext}"] = os.path.join(generated, "tls", f"node-{node_id}.{ext}")
    lines = [
        "apiVersion: v1",
        "kind: Secret",
        "metadata:",
        f"  name: reservoir-{region}-tls",
        f"  namespace: {NAMESPACE}",
        "  labels: {app.kubernetes.io/name: reservoir, reservoir/region: " + region + "}",
        "type: Opaque",
        "data:",
    ]
    for name, path in sorted(files.items()):
        with open(path, "rb") as f:
            lines.append(f"  {name}: {base64.b64encode(f.read()).decode()}")
    return "\n".join(lines) + "\n"


def service(region):
    return f"""apiVersion: v1
kind: Service
metadata:
  name: {region}
  namespace: {NAMESPACE}
  labels: {{app.kubernetes.io/name: reservoir, reservoir/region: {region}}}
spec:
  # Headless: each pod gets its own stable name, {region}-N.{region}.{NAMESPACE}.svc.cluster.local,
  # published before it is ready (peers must reach a node that is still
  # catching up or electing).
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {{app.kubernetes.io/name: reservoir, reservoir/region: {region}}}
  ports:
    - {{name: client, port: {PORTS['client']}}}
    - {{name: peer, port: {PORTS['peer']}}}
    - {{name: http, port: {PORTS['http']}}}
"""


def pdb(region):
    return f"""apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: reservoir-{region}
  namespace: {NAMESPACE}
spec:
  # A region group of three keeps its quorum with one node down.
  maxUnavailable: 1
  selector:
    matchLabels: {{app.kubernetes.io/name: reservoir, reservoir/region: {region}}}
"""


def stateful_set(region, ids, image):
    return f"""apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {region}
  namespace: {NAMESPACE}
  labels: {{app.kubernetes.io/name: reservoir, reservoir/region: {region}}}
spec:
  serviceName: {region}
  replicas: {len(ids)}
  # Every voter starts at once: a Raft group needs a majority to elect.
  podManagementPolicy: Parallel
  updateStrategy:
    type: RollingUpdate
  selector:
    matchLabels: {{app.kubernetes.io/name: reservoir, reservoir/region: {region}}}
  template:
    metadata:
      labels: {{app.kubernetes.io/name: reservoir, reservoir/region: {region}}}
    spec:
      terminationGracePeriodSeconds: 30
      securityContext:
        runAsUser: 10001
        runAsGroup: 10001
        fsGroup: 10001
        runAsNonRoot: true
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - topologyKey: kubernetes.io/hostname
              labelSelector:
                matchLabels: {{app.kubernetes.io/name: reservoir, reservoir/region: {region}}}
      containers:
        - name: reservoir
          image: {image}
          imagePullPolicy: IfNotPresent
          args: ["node"]
          env:
            - name: POD_INDEX
              valueFrom:
                fieldRef:
                  fieldPath: metadata.labels['apps.kubernetes.io/pod-index']
            - name: RESERVOIR_CONFIG
              value: /etc/reservoir/nodes/{region}-$(POD_INDEX).toml
          ports:
            - {{name: client, containerPort: {PORTS['client']}}}
            - {{name: peer, containerPort: {PORTS['peer']}}}
            - {{name: http, containerPort: {PORTS['http']}}}
          # gRPC health (grpc.health.v1) on the plaintext HTTP port: serving
          # while the node can commit, not serving while it drains.
          readinessProbe:
            grpc: {{port: {PORTS['http']}}}
            periodSeconds: 2
            failureThreshold: 2
          livenessProbe:
            httpGet: {{path: /healthz, port: http}}
            periodSeconds: 10
            failureThreshold: 3
          startupProbe:
            httpGet: {{path: /healthz, port: http}}
            periodSeconds: 2
            failureThreshold: 60
          resources:
            requests: {{cpu: "1", memory: 2Gi}}
            limits: {{memory: 4Gi}}
          volumeMounts:
            - {{name: data, mountPath: /var/lib/reservoir}}
            - {{name: config, mountPath: /etc/reservoir/nodes, readOnly: true}}
            - {{name: tls, mountPath: /etc/reservoir/tls, readOnly: true}}
      volumes:
        - name: config
          configMap: {{name: reservoir-{region}-config}}
        - name: tls
          secret: {{secretName: reservoir-{region}-tls, defaultMode: 0400}}
  volumeClaimTemplates:
    - metadata: {{name: data}}
      spec:
        accessModes: [ReadWriteOnce]
        resources: {{requests: {{storage: 20Gi}}}}
"""


def namespace():
    return f"""apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
"""


def render(reservoir, topology_path, out, image):
    generated = os.path.join(out, "generated")
    if not os.path.isdir(generated):
        subprocess.run(
            [reservoir, "deploy", "init", "--topology", topology_path, "--out", generated],
            check=True,
        )
    topology = load_topology(topology_path)
    docs = [namespace()]
    for region, ids in regions_of(topology):
        docs += [
            service(region),
            pdb(region),
            config_map(region, ids, generated),
            secret(region, ids, generated),
            stateful_set(region, ids, image),
        ]
    path = os.path.join(out, "reservoir.yaml")
    with open(path, "w") as f:
        f.write("---\n".join(docs))
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reservoir", default="reservoir", help="the reservoir binary [reservoir on PATH]")
    ap.add_argument("--topology", default=os.path.join(HERE, "topology.toml"))
    ap.add_argument("--out", required=True, help="folder to write into")
    ap.add_argument("--image", default=IMAGE, help=f"the node image [{IMAGE}]")
    args = ap.parse_args()
    if tomllib is None:
        sys.exit("render.py needs Python 3.11 or later (tomllib)")
    os.makedirs(args.out, exist_ok=True)
    print(render(args.reservoir, args.topology, args.out, args.image))


if __name__ == "__main__":
    main()
