"""deploy/'s Kubernetes and KServe manifests: every kustomization rendered offline with `kubectl
kustomize`, every object checked against the Kubernetes schemas (KEDA's, KServe's and the Prometheus
Operator's custom resources against tests/crd-schemas/), and the invariants that tie them to the code;
then the images run the way the rendered Deployments run them (podman, when the images are built).

No cluster is involved: what a cluster would decide at admission or run time is not tested here.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from functools import cache, partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import requests
import yaml

from shared.settings import Settings
from tests.support import REPO, free_port, image_exists, image_name, podman, wait_until

KUBERNETES_VERSION = "1.32"  # the kubectl this project installs; kubernetes-validate pins the schemas
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
EXAMPLE = KUBERNETES / "overlays" / "example"
CRD_SCHEMAS = Path(__file__).with_name("crd-schemas")
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.json",
}
# Environment variables that name a folder a Clarion process writes to (the root filesystem is
# read-only): Clarion's own caches, the Hugging Face cache, HOME, and where tempfile makes the
# Prometheus multiprocess folder and the inline job records unless these name one.
WRITTEN_DIRS = ("HOME", "HF_HOME", "MODEL_CACHE_DIR", "TMPDIR", "PROMETHEUS_MULTIPROC_DIR", "INLINE_JOBS_DIR")
# What else may sit in the ConfigMap beside Clarion's own settings: libraries' variables.
FOREIGN_SETTINGS = re.compile(r"^(AWS_|HF_|TRANSFORMERS_|TOKENIZERS_|OMP_|MKL_|PYTHON)")


# ---- rendering -----------------------------------------------------------------------------------


def kubectl() -> str:
    """kubectl, which CI has: there its absence is a failure, elsewhere a skip."""
    found = shutil.which("kubectl")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is not installed: CI must render deploy/'s manifests")
        pytest.skip("kubectl is not installed")
    return found


def kustomizations(kind: str) -> list[Path]:
    """The folders under deploy/ whose kustomization.yaml is of this kind (Kustomization, Component)."""
    found = []
    for path in sorted(DEPLOY.rglob("kustomization.yaml")):
        declared = yaml.safe_load(path.read_text()).get("kind", "Kustomization")
        if declared == kind:
            found.append(path.parent)
    return found


@cache
def render(folder: Path, components: tuple[Path, ...] = ()) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize folder`, with these components added on top when given."""
    if components:
        # A throwaway kustomization on top: kustomize takes relative paths only.
        with tempfile.TemporaryDirectory(prefix="clarion-kustomize-") as scratch:
            document = {
                "resources": [os.path.relpath(folder, scratch)],
                "components": [os.path.relpath(c, scratch) for c in components],
            }
            (Path(scratch) / "kustomization.yaml").write_text(yaml.safe_dump(document))
            return render(Path(scratch))
    done = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {folder}:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def name(path: Path) -> str:
    """A test id: the folder under deploy/."""
    return str(path.relative_to(DEPLOY))


def every_render() -> list[tuple[str, Path, tuple[Path, ...]]]:
    """Every Kustomization, and on top of the example overlay every Component that none uses."""
    folders = kustomizations("Kustomization")
    used = {
        (folder / component).resolve()
        for folder in folders
        for component in yaml.safe_load((folder / "kustomization.yaml").read_text()).get("components", [])
    }
    renders = [(name(folder), folder, ()) for folder in folders]
    for component in kustomizations("Component"):
        if component.resolve() not in used:
            renders.append((f"{name(EXAMPLE)}+{name(component)}", EXAMPLE, (component,)))
    return renders


RENDERS = every_render()


@dataclass
class Rendered:
    """One rendered kustomization, with look-ups by kind and name."""

    label: str
    objects: tuple[dict[str, Any], ...]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object of this kind whose name is `name`, or a generated one named `name-<hash>`."""
        for o in self.all(kind):
            if re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", o["metadata"]["name"]):
                return o
        return None

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = self.get(kind, name)
        assert found is not None, f"{self.label}: no {kind} {name}"
        return found


@pytest.fixture(params=RENDERS, ids=[label for label, _, _ in RENDERS])
def rendered(request: pytest.FixtureRequest) -> Rendered:
    label, folder, components = request.param
    return Rendered(label, render(folder, components))


KUBERNETES_RENDERS = [r for r in RENDERS if r[1].is_relative_to(KUBERNETES)]


@pytest.fixture(params=KUBERNETES_RENDERS, ids=[label for label, _, _ in KUBERNETES_RENDERS])
def deployment(request: pytest.FixtureRequest) -> Rendered:
    """A rendering of deploy/kubernetes (the API, the workers and their Redis)."""
    label, folder, components = request.param
    return Rendered(label, render(folder, components))


# ---- pods and their environment --------------------------------------------------------------


@dataclass
class Pod:
    """A pod template and its one container, as a rendering holds them."""

    owner: str
    spec: dict[str, Any]
    container: dict[str, Any]

    def security(self) -> dict[str, Any]:
        """The container's effective security settings: the pod's, overridden by the container's."""
        return {**self.spec.get("securityContext", {}), **self.container.get("securityContext", {})}

    def port(self, port: int | str) -> int:
        """A port number, or the container port of that name."""
        if isinstance(port, int):
            return port
        for declared in self.container.get("ports", []):
            if declared.get("name") == port:
                return declared["containerPort"]
        raise AssertionError(f"{self.owner}: no container port named {port}")

    def mounts(self) -> dict[str, dict[str, Any]]:
        """Mount path -> the volume mounted there (with the mount's readOnly)."""
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        # A StatefulSet's volumeClaimTemplates: a claim named after the volume.
        claim = lambda volume: {"name": volume, "persistentVolumeClaim": {"claimName": volume}}  # noqa: E731
        return {
            m["mountPath"]: {**volumes.get(m["name"], claim(m["name"])), "readOnly": m.get("readOnly", False)}
            for m in self.container.get("volumeMounts", [])
        }

    def environment(self, rendered: Rendered, resolve_secrets: bool = True) -> dict[str, str]:
        """The container's environment as the kubelet makes it: envFrom, then env over it, each value's
        $(VAR) expanded from the variables before it. Without resolve_secrets, a Secret's variables
        are left out, and references to them stay as written."""
        env: dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            env.update(rendered.one("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        for var in self.container.get("env", []):
            value = var.get("value")
            source = var.get("valueFrom", {})
            if "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                value = rendered.one("ConfigMap", ref["name"])["data"][ref["key"]]
            elif "secretKeyRef" in source:
                if not resolve_secrets:
                    continue
                ref = source["secretKeyRef"]
                value = base64.b64decode(rendered.one("Secret", ref["name"])["data"][ref["key"]]).decode()
            elif "resourceFieldRef" in source:
                value = str(resource_field(self.container, source["resourceFieldRef"]))
            assert value is not None, f"{self.owner}: cannot resolve {var}"
            env[var["name"]] = expand(value, env) if "value" in var else value
        return env

    def secret_refs(self) -> dict[str, tuple[str, str]]:
        """Variable name -> (Secret, key) for the variables read from a Secret."""
        return {
            v["name"]: (ref["name"], ref["key"])
            for v in self.container.get("env", [])
            if (ref := v.get("valueFrom", {}).get("secretKeyRef"))
        }


# The kubelet's dependent variables: $(NAME) in an env value, a command or args; $$ escapes a $.
REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """$(NAME) replaced as the kubelet does: by NAME's value if defined, else left as written."""
    return REFERENCE.sub(lambda m: "$" if m[1] is None else env.get(m[1], m[0]), text)


def references(text: str) -> list[str]:
    """The variables that $(NAME) references in a value, a command or an argument."""
    return [m[1] for m in REFERENCE.finditer(text) if m[1] is not None]


def resource_field(container: dict[str, Any], ref: dict[str, Any]) -> int:
    """What the downward API gives for limits.cpu: the limit in units of the divisor, rounded up."""
    assert ref["resource"] == "limits.cpu", ref
    return math.ceil(cpus(container["resources"]["limits"]["cpu"]) / cpus(ref.get("divisor", "1")))


def cpus(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def pods(rendered: Rendered) -> dict[str, Pod]:
    """Every pod template of the rendering by owner (Kind/name). An InferenceService's custom
    predictor is a pod spec whose container is kserve-container (a `model` predictor has none: KServe
    builds its pod from a serving runtime); its explainer, owned by "InferenceService/<name>/explainer",
    a pod spec whose first container KServe runs."""
    found = {}
    for o in rendered.objects:
        owner = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in {"Deployment", "StatefulSet"}:
            spec = o["spec"]["template"]["spec"]
            found[owner] = Pod(owner, spec, spec["containers"][0])
        elif o["kind"] == "InferenceService":
            spec = o["spec"]["predictor"]
            if spec.get("containers"):
                container = next(c for c in spec["containers"] if c["name"] == "kserve-container")
                found[owner] = Pod(owner, spec, container)
            explainer = o["spec"].get("explainer")
            if explainer is not None:
                found[f"{owner}/explainer"] = Pod(f"{owner}/explainer", explainer, explainer["containers"][0])
    return found


def argv(container: dict[str, Any]) -> list[str]:
    """What the container runs: its command, else the API image's ENTRYPOINT, then its args, else
    (without a command) the image's CMD, as the kubelet combines them."""
    dockerfile = (REPO / "Dockerfile.api").read_text()
    entrypoint, cmd = (
        json.loads(re.search(rf"^{k} (\[.*\])$", dockerfile, re.M)[1]) for k in ("ENTRYPOINT", "CMD")
    )
    if "command" in container:
        return [*container["command"], *container.get("args", [])]
    return [*entrypoint, *container.get("args", cmd)]


def serves(container: dict[str, Any]) -> bool:
    """Whether the container runs the HTTP API: `clarion serve`, or the `serve` script."""
    command = argv(container)
    return command[:2] == ["clarion", "serve"] or command[:1] == ["serve"]


def clarion_pods(rendered: Rendered) -> list[Pod]:
    """The pods that run Clarion's images (not Redis)."""
    return [p for p in pods(rendered).values() if re.search(r"clarion-(api|worker)", p.container["image"])]


def settings_of(environment: dict[str, str]) -> Settings:
    """Clarion's settings from a pod's environment, read by Clarion's own parser. MODEL_DIR must
    name an existing folder at start-up: only its value's syntax is checked here."""
    return Settings.from_env({k: v for k, v in environment.items() if k != "MODEL_DIR"})


# ---- every object against its schema ---------------------------------------------------------


def test_every_kustomization_is_rendered() -> None:
    """The parametrized tests below see every kustomization under deploy/, and every component."""
    labels = {label for label, _, _ in RENDERS}
    assert {"kubernetes/base", "kubernetes/overlays/example", "kserve", "kserve-explainer"} <= labels
    assert len(kustomizations("Component")) >= 3


@cache
def crd_schema(filename: str) -> dict[str, Any]:
    schema = json.loads((CRD_SCHEMAS / filename).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def validate(o: dict[str, Any]) -> None:
    """One object against Kubernetes' schema (strict: no unknown field), or a custom resource
    against ours and its embedded Kubernetes parts against Kubernetes'."""
    schema_file = CUSTOM_KINDS.get((o["apiVersion"], o["kind"]))
    if schema_file is None:
        kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        return
    jsonschema.Draft202012Validator(crd_schema(schema_file)).validate(o)
    if o["kind"] == "InferenceService":
        validate_components(o["spec"], crd_schema(schema_file)["$defs"])
    if o["kind"] == "ScaledObject":
        behavior = o["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
        if behavior is not None:
            hpa = {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "keda"},
                "spec": {
                    "scaleTargetRef": {"kind": "Deployment", "name": "x"},
                    "maxReplicas": 1,
                    "behavior": behavior,
                },
            }
            kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)


def validate_components(spec: dict[str, Any], defs: dict[str, Any]) -> None:
    """An InferenceService's predictor and explainer are each a PodSpec plus KServe's fields (which
    the schema checked); a `model` is a Container plus KServe's fields, the container KServe merges
    into the serving runtime's kserve-container. What is not KServe's is checked as a Pod, strictly."""
    for component in ("predictor", "explainer"):
        if component not in spec:
            continue
        kserve = (set(defs["extension"]["properties"]) | set(defs[component]["properties"])) - {"containers"}
        pod_spec = {k: v for k, v in spec[component].items() if k not in kserve}
        model = spec[component].get("model")
        if model is not None:
            container = {k: v for k, v in model.items() if k not in defs["model"]["properties"]}
            others = [c for c in pod_spec.get("containers", []) if c.get("name") != "kserve-container"]
            pod_spec["containers"] = [{"name": "kserve-container", **container}, *others]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": component}, "spec": pod_spec}
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_every_object_is_valid(rendered: Rendered) -> None:
    assert rendered.objects
    errors = []
    for o in rendered.objects:
        try:
            validate(o)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            path = ".".join(str(p) for p in exc.absolute_path)
            errors.append(f"{o['kind']}/{o['metadata'].get('name')}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(exc.message)
    assert not errors, f"{rendered.label}:\n" + "\n".join(errors)


def test_the_schemas_refuse_what_they_should() -> None:
    """The hand-written schemas are not vacuous: a typo or a missing required field fails."""
    scaled = next(o for o in render(KUBERNETES / "base") if o["kind"] == "ScaledObject")
    validate(scaled)
    broken = json.loads(json.dumps(scaled))
    broken["spec"]["triggers"][0]["metadata"]["listname"] = broken["spec"]["triggers"][0]["metadata"].pop(
        "listName"
    )
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    broken = json.loads(json.dumps(scaled))
    del broken["spec"]["scaleTargetRef"]
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    service = next(iter(render(DEPLOY / "kserve")))
    broken = json.loads(json.dumps(service))
    broken["spec"]["predictor"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)
    (explained,) = render(DEPLOY / "kserve-explainer")
    validate(explained)
    # (where, key, value, who refuses it): the key set to the value there, or removed where the value
    # is None; refused by our schema (jsonschema) or as a Pod (kubernetes-validate).
    for where, key, value, error in (
        ("predictor.model", "modelFormat", None, jsonschema.ValidationError),
        ("predictor.model", "protocolVersion", "v3", jsonschema.ValidationError),
        ("predictor.model", "storageURI", "hf://a/b", kubernetes_validate.ValidationError),
        ("predictor", "model", None, jsonschema.ValidationError),
        ("explainer", "containers", None, jsonschema.ValidationError),
        ("explainer", "minReplica", 1, kubernetes_validate.ValidationError),
        ("explainer.containers.0", "name", "clarion", jsonschema.ValidationError),
        ("explainer.containers.0", "livenesProbe", {}, kubernetes_validate.ValidationError),
    ):
        broken = json.loads(json.dumps(explained))
        part = broken["spec"]
        for step in where.split("."):
            part = part[int(step)] if step.isdigit() else part[step]
        if value is None:
            del part[key]
        else:
            part[key] = value
        with pytest.raises(error) as raised:
            validate(broken)
        # kubernetes-validate's errors are jsonschema's too: say which of the two refused it.
        by_kubernetes = isinstance(raised.value, kubernetes_validate.ValidationError)
        assert by_kubernetes == (error is kubernetes_validate.ValidationError), (where, key, raised.value)


def test_the_config_holds_valid_settings_only(deployment: Rendered) -> None:
    """Each ConfigMap key is a setting Clarion reads (a typo would be silently ignored) or a
    library's, and the values parse as Clarion parses them."""
    known = {f.metadata["env"] for f in fields(Settings) if "env" in f.metadata}
    config = deployment.one("ConfigMap", "clarion-config")["data"]
    unknown = [k for k in config if k not in known and not FOREIGN_SETTINGS.match(k)]
    assert not unknown, f"not Clarion settings: {unknown}"
    for pod in clarion_pods(deployment):
        settings_of(pod.environment(deployment, resolve_secrets=False))


# ---- the invariants that tie the manifests to the code ---------------------------------------


def test_workers_finish_their_job_within_the_grace_period(deployment: Rendered) -> None:
    """SIGTERM is Celery's warm shutdown: the running job finishes, JOB_TIME_LIMIT at the most."""
    pod = pods(deployment)["Deployment/clarion-worker"]
    settings = settings_of(pod.environment(deployment, resolve_secrets=False))
    grace = pod.spec["terminationGracePeriodSeconds"]
    assert grace >= settings.job_time_limit_s + 30, (grace, settings.job_time_limit_s)


def test_clarion_runs_unprivileged_on_a_read_only_root(rendered: Rendered) -> None:
    dockerfile_user = re.search(r"^USER (\d+):(\d+)$", (REPO / "Dockerfile.api").read_text(), re.M)
    assert dockerfile_user is not None
    for pod in pods(rendered).values():
        security = pod.security()
        assert security.get("runAsNonRoot") is True, pod.owner
        assert security.get("readOnlyRootFilesystem") is True, pod.owner
        assert security.get("allowPrivilegeEscalation") is False, pod.owner
        assert security.get("capabilities", {}).get("drop") == ["ALL"], pod.owner
    for pod in clarion_pods(rendered):
        security = pod.security()
        assert (str(security["runAsUser"]), str(security["runAsGroup"])) == dockerfile_user.groups()


def written_paths(pod: Pod, environment: dict[str, str]) -> set[str]:
    """Every folder a Clarion process writes to: those its environment names (else the image's
    defaults, from the Dockerfiles), tempfile's folder and gunicorn's heartbeat folder."""
    from api.server import gunicorn_options

    image_env = dict(
        re.findall(r"^\s+(HOME|HF_HOME|MODEL_CACHE_DIR)=(\S+)", (REPO / "Dockerfile.api").read_text(), re.M)
    )
    paths = {environment.get(var) or image_env.get(var) for var in WRITTEN_DIRS}
    paths.add(environment.get("TMPDIR", "/tmp"))
    if serves(pod.container):
        paths.add(gunicorn_options(Settings())["worker_tmp_dir"] or "/tmp")
    return {p for p in paths if p}


def test_every_folder_the_process_writes_is_an_empty_dir(rendered: Rendered) -> None:
    for pod in clarion_pods(rendered):
        environment = pod.environment(rendered, resolve_secrets=False)
        mounts = pod.mounts()
        for path in written_paths(pod, environment):
            under = [m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")]
            assert under, f"{pod.owner}: {path} is written but on the read-only root"
            volume = mounts[max(under, key=len)]
            assert "emptyDir" in volume and not volume["readOnly"], f"{pod.owner}: {path} on {volume}"
        for path, volume in mounts.items():
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), f"{pod.owner}: {path} has no sizeLimit"


def test_probes_ask_ping_on_the_port_clarion_listens_on(rendered: Rendered) -> None:
    """/ping answers 503 until the model is loaded: the startup probe waits for it, minutes if need
    be, before the liveness probe may restart the pod. A remote model's /ping follows its predictor
    (docs/remote.md): there the liveness probe asks /v2/health/live, which answers while Clarion
    does, so that a predictor that is down does not get Clarion restarted."""
    from api.app import create_app
    from shared.settings import Settings

    app = create_app(Settings(serverless=True), load_model=False)
    routed = {rule.rule for rule in app.url_map.iter_rules()}
    serving = [p for p in clarion_pods(rendered) if serves(p.container)]
    for pod in serving:
        settings = settings_of(pod.environment(rendered, resolve_secrets=False))
        listens = settings.port
        assert listens in {p["containerPort"] for p in pod.container["ports"]}, pod.owner
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = pod.container[kind]
            remote_liveness = kind == "livenessProbe" and settings.model_url is not None
            path = "/v2/health/live" if remote_liveness else "/ping"
            assert probe["httpGet"]["path"] == path, (pod.owner, kind)
            assert path in routed, path
            assert pod.port(probe["httpGet"]["port"]) == listens, (pod.owner, kind)
        startup = pod.container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, pod.owner
    for service in rendered.all("Service"):
        if service["metadata"]["name"] == "clarion-api":
            target = service["spec"]["ports"][0]["targetPort"]
            assert pods(rendered)["Deployment/clarion-api"].port(target) == 8080


def test_keda_counts_the_celery_queue_on_clarions_redis(deployment: Rendered) -> None:
    from shared.jobs.broker import QUEUE

    scaled = deployment.one("ScaledObject", "clarion-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "clarion-worker"
    assert deployment.get("Deployment", "clarion-worker") is not None
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == QUEUE
    worker = pods(deployment)["Deployment/clarion-worker"]
    # The base has no Secret (`kubectl create secret`): there the URL's password stays $(...).
    environment = worker.environment(deployment, resolve_secrets=bool(deployment.all("Secret")))
    redis_url = urlsplit(environment["REDIS_URL"])
    assert int(trigger["metadata"].get("databaseIndex", "0")) == int(redis_url.path.strip("/") or 0)
    service = deployment.get("Service", "clarion-redis")
    if service is not None:  # in-cluster: KEDA's operator reaches the Service from its own namespace
        port = service["spec"]["ports"][0]["port"]
        namespace = service["metadata"]["namespace"]
        expected = f"{service['metadata']['name']}.{namespace}.svc.cluster.local:{port}"
        assert trigger["metadata"]["address"] == expected
        assert (redis_url.hostname, redis_url.port) == (service["metadata"]["name"], port)
        redis = pods(deployment)["StatefulSet/clarion-redis"]
        assert redis.port(service["spec"]["ports"][0]["targetPort"]) == port
        args = redis.container["args"]
        assert args[args.index("--appendonly") + 1] == "yes"
        assert deployment.one("StatefulSet", "clarion-redis")["spec"]["volumeClaimTemplates"]
    else:  # external: the address comes from the Secret that holds REDIS_URL
        auth = deployment.one("TriggerAuthentication", trigger["authenticationRef"]["name"])
        refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
        secret = deployment.one("Secret", refs["address"]["name"])
        address = base64.b64decode(secret["data"][refs["address"]["key"]]).decode()
        assert address == f"{redis_url.hostname}:{redis_url.port}"
        assert refs["password"]["key"] in secret["data"]
        assert deployment.get("StatefulSet", "clarion-redis") is None
    assert "REDIS_URL" not in deployment.one("ConfigMap", "clarion-config")["data"], "it holds the password"


def test_the_api_key_comes_from_a_secret(deployment: Rendered) -> None:
    api = pods(deployment)["Deployment/clarion-api"]
    (var,) = [v for v in api.container["env"] if v["name"] == "API_KEYS"]
    ref = var["valueFrom"]["secretKeyRef"]
    assert not ref.get("optional"), "without the Secret the API must not start unauthenticated"
    secrets = deployment.all("Secret")
    if not secrets:  # the base: created by `kubectl create secret` (docs/kubernetes.md)
        assert ref == {"name": "clarion-api-keys", "key": "API_KEYS"}
        return
    keys = settings_of(api.environment(deployment)).api_keys
    assert keys, f"{deployment.label}: the Secret {ref['name']} has no key {ref['key']}"


def test_every_variable_reference_is_defined_before_it(rendered: Rendered) -> None:
    """The kubelet leaves a $(NAME) it cannot resolve as written: a URL would then carry the text
    `$(REDIS_PASSWORD)` as its password. A value may reference only the variables before it."""
    for pod in pods(rendered).values():
        defined: set[str] = set()
        for source in pod.container.get("envFrom", []):
            defined |= set(rendered.one("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        for var in pod.container.get("env", []):
            missing = set(references(var.get("value", ""))) - defined
            assert not missing, (
                f"{rendered.label}: {pod.owner}'s {var['name']} references {missing} before it"
            )
            defined.add(var["name"])
        for argument in pod.container.get("command", []) + pod.container.get("args", []):
            missing = set(references(argument)) - defined
            assert not missing, f"{rendered.label}: {pod.owner} runs {argument!r}, {missing} undefined"


def redis_password_refs(deployment: Rendered) -> dict[str, tuple[str, str]]:
    """Who -> the (Secret, key) it takes Redis's password from: Redis's --requirepass, the password
    in the API's and the workers' REDIS_URL, and KEDA's TriggerAuthentication."""
    found: dict[str, tuple[str, str]] = {}
    redis = pods(deployment).get("StatefulSet/clarion-redis")
    if redis is not None:
        args = redis.container["args"]
        (variable,) = references(args[args.index("--requirepass") + 1])
        found[redis.owner] = redis.secret_refs()[variable]
    for kind in ("api", "worker"):
        pod = pods(deployment)[f"Deployment/clarion-{kind}"]
        refs = pod.secret_refs()
        if "REDIS_URL" in refs:  # external: the whole URL, password included, from the Secret
            found[pod.owner] = refs["REDIS_URL"]
            continue
        (url,) = [v["value"] for v in pod.container["env"] if v["name"] == "REDIS_URL"]
        password = urlsplit(url).password or ""
        (variable,) = references(password)
        assert password == f"$({variable})", f"{pod.owner}: the password is more than {variable}: {url}"
        found[pod.owner] = refs[variable]
    scaled = deployment.one("ScaledObject", "clarion-worker")
    auth = deployment.one("TriggerAuthentication", scaled["spec"]["triggers"][0]["authenticationRef"]["name"])
    (ref,) = [r for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "password"]
    found["TriggerAuthentication"] = (ref["name"], ref["key"])
    return found


def test_redis_api_workers_and_keda_share_one_password(deployment: Rendered) -> None:
    refs = redis_password_refs(deployment)
    secrets = {name for name, _ in refs.values()}
    assert len(secrets) == 1, f"{deployment.label}: the password comes from several Secrets: {refs}"
    if "StatefulSet/clarion-redis" in refs:
        assert len(set(refs.values())) == 1, f"{deployment.label}: {refs}"
        assert set(refs) == {
            "StatefulSet/clarion-redis",
            "Deployment/clarion-api",
            "Deployment/clarion-worker",
            "TriggerAuthentication",
        }
    if not deployment.all("Secret"):  # the base: created by `kubectl create secret` (docs/kubernetes.md)
        assert secrets == {"clarion-redis"}
        return
    # The example Secrets: the URLs the pods end up with carry exactly the password Redis and KEDA get.
    secret_name, key = refs["TriggerAuthentication"]
    secret = deployment.one("Secret", secret_name)
    password = base64.b64decode(secret["data"][key]).decode()
    assert password, f"{deployment.label}: an empty password leaves Redis open"
    for kind in ("api", "worker"):
        url = pods(deployment)[f"Deployment/clarion-{kind}"].environment(deployment)["REDIS_URL"]
        assert urlsplit(url).password == password, f"{deployment.label}: {kind} connects with {url}"
    redis = pods(deployment).get("StatefulSet/clarion-redis")
    if redis is not None:
        environment = redis.environment(deployment)
        args = [expand(a, environment) for a in redis.container["args"]]
        assert args[args.index("--requirepass") + 1] == password
        # The readiness probe's redis-cli authenticates from the environment, not a -a argument.
        assert environment["REDISCLI_AUTH"] == password
        assert "redis-cli" in " ".join(redis.container["readinessProbe"]["exec"]["command"])


def test_the_redis_password_is_written_in_secrets_only(deployment: Rendered) -> None:
    """Every other object names the password by reference: the Secrets' values appear nowhere else,
    and no Redis URL or --requirepass outside a Secret holds a literal password."""
    passwords: set[str] = set()
    for secret in deployment.all("Secret"):
        for key, value in secret.get("data", {}).items():
            decoded = base64.b64decode(value).decode()
            if key == "password":
                passwords.add(decoded)
            elif decoded.startswith(("redis://", "rediss://")):
                passwords.add(urlsplit(decoded).password or "")
    passwords.discard("")
    assert passwords or not deployment.all("Secret"), f"{deployment.label}: no password in the Secrets"
    for o in deployment.objects:
        if o["kind"] == "Secret":
            continue
        text = json.dumps(o)
        for password in passwords:
            assert password not in text, f"{deployment.label}: {o['kind']}/{o['metadata']['name']} holds it"
        for url in re.findall(r"rediss?://[^\"\s]*", text):
            password = urlsplit(url).password
            assert password is None or re.fullmatch(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", password), url
    redis = pods(deployment).get("StatefulSet/clarion-redis")
    if redis is not None:
        args = redis.container["args"]
        assert re.fullmatch(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", args[args.index("--requirepass") + 1])


# Redis's memory units (redis.conf): k, m, g are powers of 1000, kb, mb, gb of 1024.
REDIS_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
# Kubernetes quantities (the ones a memory limit uses).
QUANTITY_UNITS = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def redis_bytes(text: str) -> int:
    """A Redis memory setting (`1gb`) in bytes."""
    match = re.fullmatch(r"(\d+)([a-z]*)", text.lower())
    assert match is not None, text
    return int(match[1]) * REDIS_UNITS[match[2]]


def quantity_bytes(text: str) -> int:
    """A Kubernetes memory quantity (`2Gi`) in bytes."""
    match = re.fullmatch(r"(\d+)([a-zA-Z]*)", text)
    assert match is not None, text
    return int(match[1]) * QUANTITY_UNITS[match[2]]


def test_redis_refuses_writes_when_full_rather_than_evicting(deployment: Rendered) -> None:
    """Redis is the broker: an evicted key is a lost job. Full, it must refuse writes (noeviction),
    and reach its maxmemory well under the container's limit, or the kernel kills it first (the
    append-only file's rewrite forks)."""
    redis = pods(deployment).get("StatefulSet/clarion-redis")
    if redis is None:  # an external Redis: docs/kubernetes.md asks for noeviction there
        return
    args = redis.container["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    maxmemory = redis_bytes(args[args.index("--maxmemory") + 1])
    limit = quantity_bytes(redis.container["resources"]["limits"]["memory"])
    assert 0 < maxmemory <= 0.8 * limit, (maxmemory, limit)
    assert redis_bytes("1gb") == 2**30 and quantity_bytes("2Gi") == 2**31  # the units as documented


def policy_sources(policy: dict[str, Any], labels: dict[str, dict[str, str]]) -> set[tuple[Any, ...]]:
    """A policy's ingress sources, each as ("pods", the templates its podSelector picks in this
    namespace) or ("namespace", its namespaceSelector's labels); ("anywhere",) for a rule without
    `from`. Pods of a namespace and pods by label in another are not used here."""
    found: set[tuple[Any, ...]] = set()
    for rule in policy["spec"].get("ingress", []):
        if "from" not in rule:
            found.add(("anywhere",))
        for peer in rule.get("from", []):
            assert set(peer) in ({"podSelector"}, {"namespaceSelector"}), peer
            if "podSelector" in peer:
                picked = frozenset(n for n, ls in labels.items() if selects(peer["podSelector"], ls))
                found.add(("pods", picked))
            else:
                selector = peer["namespaceSelector"]
                assert set(selector) == {"matchLabels"}, selector
                found.add(("namespace", frozenset(selector["matchLabels"].items())))
    return found


def policy_ports(policy: dict[str, Any], pod: Pod) -> set[int]:
    """The container ports a policy opens on the pod (a named port is the container's)."""
    ports = {pod.port(p["port"]) for rule in policy["spec"].get("ingress", []) for p in rule.get("ports", [])}
    assert all(rule.get("ports") for rule in policy["spec"].get("ingress", [])), "a rule opens every port"
    return ports


def test_network_policies_let_in_only_what_each_pod_needs(deployment: Rendered) -> None:
    """Each pod is isolated by one policy, selected by its template's own labels: the API's port open
    to any source; the workers' metrics port to this namespace (and the Prometheus's, with a
    PodMonitor); Redis's port to the API, the workers and KEDA's operator (namespace keda) only."""
    labels = {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in deployment.objects
        if o["kind"] in {"Deployment", "StatefulSet"}
    }
    policies: dict[str, dict[str, Any]] = {}
    for policy in deployment.all("NetworkPolicy"):
        assert policy["spec"]["policyTypes"] == ["Ingress"], policy["metadata"]["name"]
        (selected,) = [n for n, ls in labels.items() if selects(policy["spec"]["podSelector"], ls)]
        assert selected not in policies, f"{selected}: selected by two policies"
        policies[selected] = policy
    assert set(policies) == set(labels), f"{deployment.label}: pods without a policy"
    pod_of = {n.split("/")[1]: p for n, p in pods(deployment).items()}

    api = pod_of["clarion-api"]
    settings = settings_of(api.environment(deployment, resolve_secrets=False))
    assert policy_sources(policies["clarion-api"], labels) == {("anywhere",)}
    assert policy_ports(policies["clarion-api"], api) == {settings.port}

    worker = pod_of["clarion-worker"]
    settings = settings_of(worker.environment(deployment, resolve_secrets=False))
    everyone_here = ("pods", frozenset(labels))
    monitoring = ("namespace", frozenset({("kubernetes.io/metadata.name", "monitoring")}))
    expected = {everyone_here, monitoring} if deployment.all("PodMonitor") else {everyone_here}
    assert policy_sources(policies["clarion-worker"], labels) == expected
    assert policy_ports(policies["clarion-worker"], worker) == {settings.metrics_port}

    service = deployment.get("Service", "clarion-redis")
    if service is None:  # external: no Redis here, and no policy for it
        assert "clarion-redis" not in labels
        return
    keda = ("namespace", frozenset({("kubernetes.io/metadata.name", "keda")}))
    api_pods, worker_pods = ("pods", frozenset({"clarion-api"})), ("pods", frozenset({"clarion-worker"}))
    assert policy_sources(policies["clarion-redis"], labels) == {api_pods, worker_pods, keda}
    redis = pod_of["clarion-redis"]
    assert policy_ports(policies["clarion-redis"], redis) == {
        redis.port(service["spec"]["ports"][0]["targetPort"])
    }


def test_every_image_is_tagged_by_a_kustomization(rendered: Rendered) -> None:
    """The manifests name images bare; only kustomizations' `images:` tag them, so one overlay
    retags everything."""
    for path in DEPLOY.rglob("*.yaml"):
        if path.name != "kustomization.yaml":
            for line in re.findall(r"^\s*-?\s*image:\s*(\S+)", path.read_text(), re.M):
                assert ":" not in line and "@" not in line, f"deploy/{name(path)}: {line} is tagged in place"
    for pod in pods(rendered).values():
        image = pod.container["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"{rendered.label}: {pod.owner} runs {image}"


def test_prometheus_finds_the_metrics_ports(deployment: Rendered) -> None:
    for owner, port_of in (("Deployment/clarion-api", "PORT"), ("Deployment/clarion-worker", "METRICS_PORT")):
        pod = pods(deployment)[owner]
        annotations = deployment.one(*owner.split("/"))["spec"]["template"]["metadata"]["annotations"]
        settings = settings_of(pod.environment(deployment, resolve_secrets=False))
        port = settings.port if port_of == "PORT" else settings.metrics_port
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == port
        assert annotations["prometheus.io/path"] == "/metrics"
        assert port in {p["containerPort"] for p in pod.container["ports"]}
    for monitor in deployment.all("PodMonitor"):
        ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
        assert pods(deployment)["Deployment/clarion-api"].port("http") and "http" in ports
        assert pods(deployment)["Deployment/clarion-worker"].port("metrics") and "metrics" in ports


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    matched = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        matched &= value in expression["values"] if expression["operator"] == "In" else True
    return matched


def test_budgets_services_and_autoscalers_point_at_the_pods(deployment: Rendered) -> None:
    labels = {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in deployment.objects
        if o["kind"] in {"Deployment", "StatefulSet"}
    }
    for budget in deployment.all("PodDisruptionBudget"):
        assert [n for n, ls in labels.items() if selects(budget["spec"]["selector"], ls)] == [
            budget["metadata"]["name"]
        ]
    for service in deployment.all("Service"):
        selected = [
            n for n, ls in labels.items() if selects({"matchLabels": service["spec"]["selector"]}, ls)
        ]
        assert selected == [service["metadata"]["name"]]
    hpa = deployment.one("HorizontalPodAutoscaler", "clarion-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] in labels
    for name_ in ("clarion-api", "clarion-worker"):
        # The autoscalers own the replica count: `kubectl apply` must not reset it.
        assert "replicas" not in deployment.one("Deployment", name_)["spec"]
        assert selects(deployment.one("Deployment", name_)["spec"]["selector"], labels[name_])
    api_config, worker_config = (
        pods(deployment)[f"Deployment/clarion-{kind}"].container["envFrom"] for kind in ("api", "worker")
    )
    assert api_config == worker_config, "the API and the workers must read one ConfigMap"


def test_the_kserve_predictor_serves_alone_on_8080() -> None:
    (service,) = render(DEPLOY / "kserve")
    pod = pods(Rendered("kserve", (service,)))["InferenceService/clarion"]
    environment = pod.environment(Rendered("kserve", (service,)))
    settings = settings_of(environment)
    assert settings.serverless and not settings.jobs_are_async
    assert settings.port == 8080 and pod.port("http1") == 8080
    if "STORAGE_URI" in environment:  # KServe's storage initializer puts the model in /mnt/models
        assert environment["MODEL_DIR"] == "/mnt/models"


def test_the_kserve_explainer_explains_the_predictor_it_sits_beside(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/kserve-explainer: KServe sends :predict to a predictor Clarion does not host and
    :explain to the explainer, a single-process Clarion on 8080 whose MODEL_URL is that predictor's
    V1 or V2 model URL: its Service (<name>-predictor, in the InferenceService's namespace) and the
    model's name, the InferenceService's, which MODEL_NAME repeats so that :explain paths match."""
    rendered = Rendered("kserve-explainer", render(DEPLOY / "kserve-explainer"))
    (service,) = rendered.all("InferenceService")
    isvc = service["metadata"]["name"]
    predictor = service["spec"]["predictor"]
    assert f"InferenceService/{isvc}" not in pods(rendered), "a model predictor: KServe's runtime runs it"
    pod = pods(rendered)[f"InferenceService/{isvc}/explainer"]
    environment = pod.environment(rendered)
    assert not {"MODEL_DIR", "STORAGE_URI"} & set(environment), "the explainer hosts no model"
    settings = settings_of(environment)
    assert settings.serverless and not settings.jobs_are_async
    assert settings.port == 8080 and pod.port("http1") == 8080
    # The model is remote: a KServe model URL, no model of its own.
    assert settings.model_url is not None and settings.local_model_dir is None
    url = urlsplit(settings.model_url)
    assert url.scheme == "http", settings.model_url
    assert url.hostname is not None and re.fullmatch(rf"{isvc}-predictor(\.[a-z0-9.-]+)?", url.hostname)
    assert url.port in {None, 80}, "the predictor's Service listens on 80"
    path = re.fullmatch(r"/v([12])/models/([^/]+)", url.path)
    assert path is not None, settings.model_url
    assert path[2] == isvc == settings.model_name
    # The predictor speaks the URL's protocol and serves the model under that name.
    model = predictor.get("model", {})
    assert model.get("protocolVersion", f"v{path[1]}") == f"v{path[1]}"
    named = [a.partition("=")[2] for a in model.get("args", []) if a.startswith("--model_name=")]
    assert named in ([], [isvc]), named
    # The explanation's units are the predictor's own tokens, from the model it downloads.
    storage = model.get("storageUri", "")
    if settings.tokenizer is not None and storage.startswith("hf://"):
        assert settings.tokenizer == storage.removeprefix("hf://").partition(":")[0]
    # KServe appends --model_name, --predictor_host and --http_port to a custom explainer's
    # arguments: the command must be the `serve` script, which ignores whatever follows it.
    assert argv(pod.container) == ["serve"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["serve"] == "shared.cli.main:serve_main"
    import shared.cli.main

    ran: list[list[str] | None] = []
    monkeypatch.setattr(shared.cli.main, "main", ran.append)
    monkeypatch.setattr(
        sys, "argv", ["serve", "--model_name", isvc, "--predictor_host", "x.y", "--http_port", "8080"]
    )
    shared.cli.main.serve_main()
    assert ran == [["serve"]]


# ---- the images, run as the Deployments run them ---------------------------------------------


@dataclass
class Stack:
    url: str
    metrics_url: str
    api_key: str
    pod: str

    def logs(self, container: str) -> str:
        done = podman("logs", f"{self.pod}-{container}", check=False)
        return (done.stdout + done.stderr)[-3000:]


def podman_options(pod: Pod, rendered: Rendered, volumes_dir: Path, claims: dict[str, Path]) -> list[str]:
    """`podman run` options for a rendered pod's container, from the manifest itself: its user, the
    read-only root, capabilities, limits, environment and volumes. An emptyDir is a fresh folder
    (what the kubelet makes: mode 0777), a Memory one at /dev/shm the shm size, a claim the folder
    `claims` maps it to."""
    security = pod.security()
    read_only = "true" if security["readOnlyRootFilesystem"] else "false"
    # podman's --read-only also mounts tmpfs folders by default; a pod has none of them.
    options = ["--user", f"{security['runAsUser']}:{security['runAsGroup']}", f"--read-only={read_only}"]
    options.append("--read-only-tmpfs=false")
    if security.get("capabilities", {}).get("drop") == ["ALL"]:
        options.append("--cap-drop=all")
    if security.get("allowPrivilegeEscalation") is False:
        options.append("--security-opt=no-new-privileges")
    limits = pod.container.get("resources", {}).get("limits", {})
    if "cpu" in limits:
        options.append(f"--cpus={cpus(limits['cpu'])}")
    if "memory" in limits:
        options.append(f"--memory={limits['memory'].replace('Gi', 'g').replace('Mi', 'm')}")
    for path, volume in pod.mounts().items():
        suffix = ":ro" if volume["readOnly"] else ""
        if "emptyDir" in volume and volume["emptyDir"].get("medium") == "Memory":
            assert path == "/dev/shm", path
            options.append(f"--shm-size={volume['emptyDir']['sizeLimit'].replace('Mi', 'm')}")
        elif "emptyDir" in volume:
            folder = volumes_dir / f"{pod.owner.replace('/', '-')}-{volume['name']}"
            folder.mkdir(parents=True)
            folder.chmod(0o777)
            options += ["-v", f"{folder}:{path}{suffix}"]
        else:
            claim = volume.get("persistentVolumeClaim", {}).get("claimName", volume["name"])
            options += ["-v", f"{claims[claim]}:{path}{suffix}"]
    for key, value in pod.environment(rendered).items():
        options += ["-e", f"{key}={value}"]
    return options


@pytest.fixture(scope="module")
def stack(sst2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis, the API and a worker, each run as the example overlay with components/model-volume
    renders it, in one podman pod (one network, as a Service gives): the claim clarion-model is the
    team kit's SST-2 model, Redis's volume claim a fresh folder."""
    for kind in ("api", "worker"):
        if not image_exists(image_name(kind)):
            pytest.skip(f"no {image_name(kind)}: scripts/images.sh build")
    rendered = Rendered(
        "example + model-volume", render(EXAMPLE, (KUBERNETES / "components" / "model-volume",))
    )
    redis_image = pods(rendered)["StatefulSet/clarion-redis"].container["image"]
    if not image_exists(redis_image):
        pytest.skip(f"no {redis_image}: scripts/images.sh build")
    folder = tmp_path_factory.mktemp("volumes")
    redis_data = folder / "redis-data"
    redis_data.mkdir()
    redis_data.chmod(0o777)
    claims = {"clarion-model": sst2_dir, "data": redis_data}
    api, worker = pods(rendered)["Deployment/clarion-api"], pods(rendered)["Deployment/clarion-worker"]
    port, metrics_port = free_port(), free_port()
    pod_name = f"clarion-k8s-test-{os.getpid()}"
    podman("pod", "rm", "-f", pod_name, check=False)
    podman(
        "pod", "create", "--name", pod_name,
        # The Service's name resolves inside the pod, as the pods' REDIS_URL expects.
        "--add-host", "clarion-redis:127.0.0.1",
        "-p", f"127.0.0.1:{port}:{api.port('http')}",
        "-p", f"127.0.0.1:{metrics_port}:{worker.port('metrics')}",
    )  # fmt: skip
    images = {"redis": redis_image, "api": image_name("api"), "worker": image_name("worker")}
    redis = pods(rendered)["StatefulSet/clarion-redis"]
    try:
        for kind, pod in (("redis", redis), ("api", api), ("worker", worker)):
            options = podman_options(pod, rendered, folder, claims)
            container = f"{pod_name}-{kind}"
            # The kubelet expands $(VAR) in args (Redis's --requirepass); podman would not.
            environment = pod.environment(rendered)
            podman(
                "run",
                "-d",
                "--pod",
                pod_name,
                "--name",
                container,
                *options,
                images[kind],
                *(expand(argument, environment) for argument in pod.container["args"]),
            )
            if kind == "redis":  # workers and the API start once the StatefulSet's probe passes
                wait_until(partial(probe_passes, container, redis), 30, what="Redis's readiness probe")
        secret = rendered.one("Secret", "clarion-api-keys")
        key = base64.b64decode(secret["data"]["API_KEYS"]).decode().split(",")[0]
        yield Stack(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}", key, pod_name)
    finally:
        for kind in ("api", "worker", "redis"):
            done = podman("logs", f"{pod_name}-{kind}", check=False)
            (folder / f"{kind}.log").write_text(done.stdout + done.stderr)
        podman("pod", "rm", "-f", "-t", "0", pod_name, check=False, timeout=120)


def probe_passes(container: str, pod: Pod) -> bool:
    """The pod's exec readiness probe, run in its container (podman exec, like the kubelet's, runs
    it with the container's environment: REDISCLI_AUTH, Redis's password)."""
    command = pod.container["readinessProbe"]["exec"]["command"]
    return podman("exec", container, *command, check=False).returncode == 0


def ping(stack: Stack) -> dict[str, Any]:
    try:
        return requests.get(stack.url + "/ping", timeout=5).json()
    except (requests.RequestException, ValueError):
        return {}


@pytest.mark.images
def test_the_api_serves_under_the_deployments_security_settings(stack: Stack) -> None:
    """Read-only root, uid 10001, the Deployment's emptyDirs and environment: the model loads, the
    ONNX export is written to its cache, and an explained request is answered with the Secret's key."""

    def healthy() -> bool:
        status = ping(stack).get("status")
        assert status != "failed", stack.logs("api")
        return status == "healthy"

    wait_until(healthy, 300, interval=1, what=f"/ping\n{stack.logs('api')}")
    # The exact passes move to onnxruntime once its export is written (MODEL_CACHE_DIR, an emptyDir).
    wait_until(lambda: ping(stack).get("exact_backend") == "onnxruntime", 300, interval=1,
               what=f"the ONNX export\n{stack.logs('api')}")  # fmt: skip
    body = {"data": "A superb, moving film.", "explain": True}
    assert requests.post(stack.url + "/invocations", json=body, timeout=60).status_code == 401
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    response = requests.post(stack.url + "/invocations", json=body, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    result = response.json()
    assert {p["label"] for p in result["prediction"]} == {"NEGATIVE", "POSITIVE"}
    assert "superb" in [token.strip().lower() for token, _ in result["explanation"]]
    metrics = requests.get(stack.url + "/metrics", headers=headers, timeout=10)
    assert metrics.status_code == 200 and "clarion_requests_total" in metrics.text


@pytest.mark.images
def test_a_job_runs_on_a_worker_under_its_deployments_settings(stack: Stack) -> None:
    """The worker, read-only root and all, takes a job from the Redis its REDIS_URL names, with the
    Secret's password, and
    serves its metrics on the port the pod annotations give Prometheus."""
    wait_until(lambda: ping(stack).get("status") == "healthy", 300, interval=1, what="/ping")
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    submitted = requests.post(
        stack.url + "/explanations", json={"data": "I loved this film."}, headers=headers, timeout=60
    )
    assert submitted.status_code == 202, submitted.text
    job_url = stack.url + f"/explanations/{submitted.json()['id']}"
    status: dict[str, Any] = {}

    def finished() -> bool:
        status.update(requests.get(job_url, headers=headers, timeout=10).json())
        return status["status"] in {"succeeded", "failed", "cancelled"}

    started = time.monotonic()
    wait_until(finished, 300, interval=1, what=f"the job\n{stack.logs('worker')}")
    assert status["status"] == "succeeded", f"{status}\n{stack.logs('worker')}"
    print(f"job done {time.monotonic() - started:.1f} s after it was submitted")
    metrics = requests.get(stack.metrics_url + "/metrics", timeout=10)
    assert metrics.status_code == 200 and "clarion_job_seconds_count" in metrics.text
