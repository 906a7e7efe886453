"""Render Kubernetes manifests for serving one model, sized by the memory planner.

``python -m ernie_paddle.planning.deploy MODEL [--device gpu] [--tp N] ... > ernie.yaml`` writes a ConfigMap,
a PersistentVolumeClaim for the model cache, a Service and either a Deployment (``--tp 1``) or, for tensor
parallel, a StatefulSet (one pod per node, ``--nproc_per_node`` ranks each) started with
``python -m paddle.distributed.launch`` plus a headless Service for the rendezvous. The API keys Secret is
referenced, never rendered: ``kubectl create secret generic NAME-api-keys --from-file=api-keys=keys.txt``.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys

import yaml

from ernie_paddle.errors import ErnieError
from ernie_paddle.planning.export_peak import export_peak_bytes
from ernie_paddle.planning.memory import MemoryPlan, plan
from ernie_paddle.planning.model_ref import default_quantization, load_config
from ernie_paddle.planning.storage import QUANTIZATIONS

PORT = 8000
MASTER_PORT = 8090
HEALTH = "/health"
UID = 10001
MODELS = "/models"
KEYS_DIR = "/run/secrets/ernie"
KEYS_FILE = f"{KEYS_DIR}/api-keys"
DATA_DIR = "/var/lib/ernie-paddle"        # ERNIE_PADDLE_HOME: the server's usage database
LAUNCHER = "/opt/venv/bin/ernie-paddle"   # the console script inside the images (scripts/deploy)
MiB = 1 << 20


def mib(n: int) -> str:
    """A Kubernetes memory quantity, rounded up to MiB."""
    return f"{math.ceil(n / MiB)}Mi"


def memory_request(p: MemoryPlan, ranks: int) -> int:
    """Host memory one pod needs: ``ranks`` ranks of the planner's host figure."""
    return p.host_bytes_per_rank * ranks


def render(model: str, *, name: str = "ernie", image: str | None = None, model_dir: str | None = None,
           quantization: str | None = None, context: int = 4096, batch: int = 1, tp: int = 1,
           device: str = "cpu", gpus_per_node: int = 8, cpu: str = "2",
           storage_class: str | None = None) -> list[dict]:
    """The manifests (dicts) for ``model``; resource requests come from ``memory.plan``."""
    cfg = load_config(model)
    if quantization is None and not cfg.quantization_config:
        quantization = default_quantization(model)
    p = plan(cfg, quantization=quantization, context=context, batch=batch, tp=tp, device=device, model=model)
    first_start = None
    if p.engine == "predictor" and device == "cpu":  # the first start exports, streaming (a tensor group)
        first_start = export_peak_bytes(cfg, quantization if not cfg.quantization_config else None)
    elif p.engine == "predictor":  # Paddle's op set exports from the loaded dygraph model
        first_start = plan(cfg, quantization=quantization, context=context, batch=batch, tp=tp, device=device,
                           model=model, engine="dygraph").host_bytes_per_rank + p.host_bytes_per_rank
    per_node = min(tp, gpus_per_node)
    if tp % per_node:
        raise ErnieError(f"--tp {tp} is not a multiple of --gpus-per-node {gpus_per_node}")
    nnodes = tp // per_node
    image = image or f"ernie-paddle:{device}"
    model_path = f"{MODELS}/{model_dir or model.rstrip('/').rsplit('/', 1)[-1]}"
    labels = {"app.kubernetes.io/name": "ernie-paddle", "app.kubernetes.io/instance": name}
    settings = {"ERNIE_MODEL": model_path, "ERNIE_HOST": "0.0.0.0", "ERNIE_PORT": str(PORT),
                "ERNIE_QUANTIZATION": p.quantization, "ERNIE_CONTEXT": str(context), "ERNIE_BATCH": str(batch),
                "ERNIE_TP": str(tp), "ERNIE_DEVICE": device, "ERNIE_THREADS": str(cpu),
                "ERNIE_PADDLE_HOME": DATA_DIR, "HF_HOME": f"{MODELS}/huggingface", "HF_HUB_OFFLINE": "1",
                "OMP_NUM_THREADS": str(cpu), "HOME": "/tmp"}
    docs = [_meta("v1", "ConfigMap", f"{name}-settings", labels, data=settings),
            _pvc(name, labels, p, storage_class, shared=nnodes > 1)]
    pod = _pod_spec(name, labels, image, p, device, per_node, nnodes, cpu, first_start)
    if tp == 1:
        docs.append(_meta("apps/v1", "Deployment", name, labels, spec={
            "replicas": 1, "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels}, "template": pod}))
        docs.append(_service(name, labels, labels))
    else:
        docs.append(_meta("v1", "Service", f"{name}-ranks", labels, spec={
            "clusterIP": "None", "publishNotReadyAddresses": True, "selector": labels,
            "ports": [{"name": "master", "port": MASTER_PORT, "targetPort": MASTER_PORT}]}))
        docs.append(_meta("apps/v1", "StatefulSet", name, labels, spec={
            "serviceName": f"{name}-ranks", "replicas": nnodes, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels}, "template": pod}))
        docs.append(_service(name, labels, {**labels, "apps.kubernetes.io/pod-index": "0"}))
    return docs


def _meta(api: str, kind: str, name: str, labels: dict, **body) -> dict:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, "labels": dict(labels)}, **body}


def _pvc(name: str, labels: dict, p: MemoryPlan, storage_class: str | None, shared: bool) -> dict:
    spec = {"accessModes": ["ReadOnlyMany" if shared else "ReadWriteOnce"],
            "resources": {"requests": {"storage": f"{math.ceil(p.checkpoint_bytes * 1.2 / (1 << 30))}Gi"}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return _meta("v1", "PersistentVolumeClaim", f"{name}-models", labels, spec=spec)


def _service(name: str, labels: dict, selector: dict) -> dict:
    return _meta("v1", "Service", name, labels, spec={
        "type": "ClusterIP", "selector": selector,
        "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]})


def serve_args() -> list[str]:
    """``ernie-paddle serve`` arguments (settings come from the ConfigMap via ``$(VAR)``)."""
    return ["serve", "$(ERNIE_MODEL)", "--host", "$(ERNIE_HOST)", "--port", "$(ERNIE_PORT)",
            "--api-keys-file", KEYS_FILE, "--device", "$(ERNIE_DEVICE)", "--threads", "$(ERNIE_THREADS)",
            "--max-batch", "$(ERNIE_BATCH)"]


def _command(name: str, tp: int, per_node: int, nnodes: int) -> list[str]:
    if tp == 1:
        return ["ernie-paddle", *serve_args()]
    return ["python", "-m", "paddle.distributed.launch", "--nnodes", str(nnodes),
            "--master", f"{name}-0.{name}-ranks:{MASTER_PORT}", "--rank", "$(POD_INDEX)",
            "--nproc_per_node", str(per_node), "--log_dir", "/tmp/paddle-log", LAUNCHER, *serve_args()]


def _probe(period: int, failures: int) -> dict:
    return {"httpGet": {"path": HEALTH, "port": "http"}, "periodSeconds": period, "timeoutSeconds": 5,
            "failureThreshold": failures}


def _pod_spec(name, labels, image, p: MemoryPlan, device, per_node, nnodes, cpu, first_start=None) -> dict:
    """``first_start``: host bytes of the first start's export (predictor engine), which the limit covers."""
    mem = memory_request(p, per_node)
    resources = {"requests": {"cpu": str(cpu), "memory": mib(mem)},
                 "limits": {"memory": mib(int(max(mem, first_start or 0) * 1.2))}}
    if device == "gpu":
        resources["requests"]["nvidia.com/gpu"] = resources["limits"]["nvidia.com/gpu"] = str(per_node)
    env = [{"name": "POD_INDEX", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}}] if p.tp > 1 else []
    mounts = [{"name": "models", "mountPath": MODELS, "readOnly": True},
              {"name": "api-keys", "mountPath": KEYS_DIR, "readOnly": True},
              {"name": "tmp", "mountPath": "/tmp"}, {"name": "data", "mountPath": DATA_DIR}]
    volumes = [{"name": "models", "persistentVolumeClaim": {"claimName": f"{name}-models", "readOnly": True}},
               {"name": "api-keys", "secret": {"secretName": f"{name}-api-keys"}},
               {"name": "tmp", "emptyDir": {}},
               {"name": "data", "emptyDir": {}}]  # usage database; use a PVC to keep it across restarts
    if p.tp > 1:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}})
    ports = [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
    if p.tp > 1:
        ports.append({"name": "master", "containerPort": MASTER_PORT, "protocol": "TCP"})
    container = {
        "name": "ernie", "image": image, "imagePullPolicy": "IfNotPresent",
        "command": _command(name, p.tp, per_node, nnodes),
        "envFrom": [{"configMapRef": {"name": f"{name}-settings"}}], "env": env,
        "ports": ports, "resources": resources, "volumeMounts": mounts,
        "startupProbe": _probe(10, 180), "readinessProbe": _probe(10, 3), "livenessProbe": _probe(20, 3),
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}}}
    if not env:
        del container["env"]
    fit = p.fit.get("name", "")
    annotations = {"ernie-paddle/plan": f"{p.quantization} on {p.device}, tp={p.tp}, context={p.context}, "
                                        f"batch={p.batch}",
                   "ernie-paddle/device-bytes-per-rank": str(p.total_bytes_per_rank),
                   "ernie-paddle/fits": fit}
    return {"metadata": {"labels": dict(labels), "annotations": annotations},
            "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                                         "fsGroup": UID},
                     "terminationGracePeriodSeconds": 30, "containers": [container], "volumes": volumes}}


class _Dumper(yaml.SafeDumper):
    """Indents block sequences under their key (yamllint's default style)."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def to_yaml(docs: list[dict], header: str = "") -> str:
    body = "".join("---\n" + yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=110) for d in docs)
    return (header + "\n" if header else "") + body


def command_header(words: list[str]) -> str:
    """``# rendered by:`` and the command, wrapped into comment lines ending in `` \\``."""
    lines, line = [], "#   python -m ernie_paddle.planning.deploy"
    for w in map(shlex.quote, words):
        if len(line) + len(w) > 100:
            lines.append(line + " \\")
            line = "#    "
        line += " " + w
    return "\n".join(["# rendered by:", *lines, line])


def header_command(text: str) -> list[str]:
    """The arguments of a rendered file's header (inverse of ``command_header``)."""
    lines = []
    for raw in text.splitlines()[1:]:
        if not raw.startswith("#   "):
            break
        lines.append(raw[1:].rstrip(" \\"))
    return shlex.split(" ".join(lines))[3:]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m ernie_paddle.planning.deploy", description=__doc__.split("\n")[0])
    ap.add_argument("model", help="family preset, model folder or cached repo id")
    ap.add_argument("--name", default="ernie")
    ap.add_argument("--image", default=None, help="default ernie-paddle:<device>")
    ap.add_argument("--model-dir", default=None, help=f"folder under {MODELS} on the volume")
    ap.add_argument("--quantization", choices=QUANTIZATIONS, default=None)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--cpu", default="2", help="CPU cores requested per pod")
    ap.add_argument("--storage-class", default=None)
    ap.add_argument("-o", "--output", default="-")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = vars(parser().parse_args(argv))
    out, model = args.pop("output"), args.pop("model")
    shown = [model] + [f"--{k.replace('_', '-')}={v}" for k, v in args.items() if v != parser().get_default(k)]
    text = to_yaml(render(model, **args), command_header(shown))
    if out == "-":
        sys.stdout.write(text)
    else:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ErnieError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
