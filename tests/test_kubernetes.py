"""deploy/kubernetes: every manifest rendered by kustomize and validated against the Kubernetes
schemas in strict mode, its secrets and environment held to what sweep reads, and the Jobs'
commands run as written against a real PostgreSQL and a real MLflow server (no cluster here).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
import yaml
from helpers import free_port, postgres_database, fail_without_postgres, study_dict, write_study

from sweep.storage import DEPLOY_ENV
from sweep.urls import mask

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = {"base": KUBE, "external-db": KUBE / "external-db", "workers": KUBE / "workers", "gpu": KUBE / "gpu"}
KUBERNETES_VERSION = "1.32.0"  # the API the manifests are written for (kubernetes-validate's schemas)
SECRET = "sweep"  # the Secret every password comes from: kubectl create secret generic sweep --from-env-file=.env
POSTGRES_URL = os.environ.get("SWEEP_TEST_POSTGRES_URL")
PASSWORD = "k8s-Pa55@word/x"  # what the Secret would hold; trust auth here ignores it


def _render(path: Path) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is not installed: the manifests are rendered with `kubectl kustomize` "
                    "(install kubectl 1.27 or later, e.g. from the Kubernetes apt repository)", pytrace=False)
    r = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: _render(path) for name, path in KUSTOMIZATIONS.items()}


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def _pods(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] == "Job" or d["kind"] in ("Deployment", "StatefulSet"):
            yield f"{d['kind']}/{d['metadata']['name']}", spec["template"]["spec"]


def test_every_manifest_is_valid_kubernetes_in_strict_mode(rendered: dict[str, list[dict[str, Any]]]) -> None:
    import jsonschema
    import kubernetes_validate

    for name, docs in rendered.items():
        assert docs, name
        for d in docs:
            try:  # strict: a field Kubernetes does not know is refused, not ignored
                kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)
            except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as e:
                pytest.fail(f"{name}: {d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}")
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in rendered["base"])
    assert [re.sub(r"-[a-z0-9]{10}$", "", k) for k in kinds] == [
        "ConfigMap/sweep-postgres-init", "ConfigMap/sweep-settings", "Deployment/mlflow", "Job/sweep-schema",
        "PersistentVolumeClaim/mlflow-artifacts", "Service/mlflow", "Service/postgres", "StatefulSet/postgres"]


def test_schema_validation_refuses_an_unknown_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The check above can fail: a misspelt field in the worker Job is refused."""
    import kubernetes_validate

    job = _find(rendered["workers"], "Job", "sweep-workers")
    job["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)


def test_objects_are_what_a_platform_team_expects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    base, workers, gpu = rendered["base"], rendered["workers"], rendered["gpu"]
    # a database of your own: no PostgreSQL in the cluster, MLflow's database URL from the Secret
    external = rendered["external-db"]
    assert not [d for d in external if "postgres" in d["metadata"]["name"]]
    backend = next(e for e in _find(external, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["env"]
                   if e["name"] == "MLFLOW_BACKEND_STORE_URI")
    assert backend["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "MLFLOW_BACKEND_STORE_URI"}
    mlflow = _find(base, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert mlflow["readinessProbe"]["httpGet"]["path"] == "/health"
    assert mlflow["livenessProbe"]["httpGet"]["path"] == "/health"
    assert _find(base, "StatefulSet", "postgres")["spec"]["volumeClaimTemplates"]
    job = _find(workers, "Job", "sweep-workers")["spec"]
    assert job["parallelism"] >= 1 and "completions" not in job and job["backoffLimit"] >= 10
    assert {r["action"] for r in job["podFailurePolicy"]["rules"]} == {"Ignore", "FailJob"}
    container = job["template"]["spec"]["containers"][0]
    threads = int(container["command"][container["command"].index("--threads-per-worker") + 1])
    assert int(container["resources"]["requests"]["cpu"]) == threads  # one trial process a pod
    gpu_container = _find(gpu, "Job", "sweep-workers")["spec"]["template"]["spec"]["containers"][0]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == 1
    command = gpu_container["command"]
    per_pod = int(command[command.index("--workers") + 1]) * int(command[command.index("--threads-per-worker") + 1])
    assert int(gpu_container["resources"]["requests"]["cpu"]) == per_pod
    for name, docs in rendered.items():
        for where, pod in _pods(docs):
            for c in pod["containers"]:
                ctx = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
                assert ctx.get("runAsNonRoot") is True and ctx.get("allowPrivilegeEscalation") is False, where
                assert ctx.get("runAsUser", 0) != 0, where


def _env_names(container: dict[str, Any]) -> list[str]:
    return [e["name"] for e in container.get("env", [])]


def _referenced(container: dict[str, Any]) -> set[str]:
    """Names other env values use as $(NAME): Kubernetes composes those values from them."""
    return {m for e in container.get("env", []) for m in re.findall(r"\$\((\w+)\)", e.get("value", ""))}


def test_the_fields_the_readmes_fault_table_rests_on(rendered: dict[str, list[dict[str, Any]]],
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README, "On Kubernetes": bad input fails the Job at once, an eviction is not counted, a
    SIGTERM gets 60 s to mark its trial interrupted, and workers wait 300 s for PostgreSQL. Each
    number and rule is read from the rendered manifests and from what sweep itself does."""
    from sweep.settings import load_settings
    from sweep.errors import ConfigError, ServiceError

    readme = (ROOT / "README.md").read_text()
    for docs in (rendered["workers"], rendered["gpu"]):
        spec = _find(docs, "Job", "sweep-workers")["spec"]
        rules = {r["action"]: r for r in spec["podFailurePolicy"]["rules"]}
        # the exit code of bad input (a study file, a setting) fails the Job, and only that one
        assert rules["FailJob"]["onExitCodes"] == {"containerName": "worker", "operator": "In",
                                                   "values": [ConfigError.exit_code]}
        assert ServiceError.exit_code not in rules["FailJob"]["onExitCodes"]["values"]  # an outage is retried
        assert spec["template"]["spec"]["containers"][0]["name"] == "worker"
        # evicted, preempted, drained: not counted against backoffLimit
        assert rules["Ignore"]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
        assert spec["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it
        grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace == 60 and f"with a {grace} s grace" in readme
    settings = tmp_path / "mlflow.yaml"
    settings.write_text(_find(rendered["base"], "ConfigMap", "sweep-settings")["data"]["mlflow.yaml"])
    for var in _settings_refs(rendered["base"]):
        monkeypatch.setenv(var, "x")
    workers = load_settings(settings).workers
    assert workers.storage_outage == 300 and f"`storage_outage` ({workers.storage_outage:g} s in the cluster's" in readme


def _settings_refs(docs: list[dict[str, Any]]) -> set[str]:
    settings = _find(docs, "ConfigMap", "sweep-settings")["data"]["mlflow.yaml"]
    return set(re.findall(r"\$\{(\w+)", settings))


def _env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {k.strip(): v.strip() for k, v in pairs}


def test_compose_and_kubernetes_set_only_what_is_read(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """One truth: every environment variable set for a container is read by what runs there
    (sweep, MLflow's server, the postgres image and its init script), or composes one that is;
    every Secret key a manifest names is one of .env.example's, the names the Secret is made from."""
    import mlflow.cli

    mlflow_reads = {p.envvar for p in mlflow.cli.server.params if isinstance(p.envvar, str)}
    mlflow_reads.add("MLFLOW_SERVER_ENABLE_JOB_EXECUTION")  # read by the server app (mlflow.environment_variables)
    init_script = (KUBE / "postgres" / "postgres-init.sh").read_text()
    postgres_reads = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGDATA"} | {
        n for n in ("SWEEP_DATABASES",) if f"${{{n}" in init_script}
    docs = [d for docs in rendered.values() for d in docs]
    sweep_reads = set(DEPLOY_ENV) | _settings_refs(rendered["base"])
    env_keys = set(_env_example())
    checked = 0
    for where, pod in _pods(docs):
        for c in pod["containers"]:
            reads = {"postgres": postgres_reads, "mlflow": mlflow_reads}.get(c["name"], sweep_reads)
            unread = set(_env_names(c)) - reads - _referenced(c)
            assert not unread, f"{where} sets {sorted(unread)}: nothing in its container reads them"
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == SECRET and ref["key"] in env_keys, (where, ref)
                checked += 1
    assert checked > 15

    r = subprocess.run(["docker-compose", "config"] if shutil.which("docker-compose") else ["docker", "compose", "config"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, **_env_example()})
    assert r.returncode == 0, r.stderr
    services = yaml.safe_load(r.stdout)["services"]
    for name, reads in (("worker", sweep_reads), ("schema", sweep_reads), ("mlflow", mlflow_reads),
                        ("postgres", postgres_reads)):
        # what the service's own shell command reads counts as read: compose has no $(NAME)
        command = " ".join(services[name].get("command") or [])
        unread = set(services[name]["environment"]) - reads - set(re.findall(r"\$\{?(\w+)", command))
        assert not unread, f"docker-compose.yml: {name} sets {sorted(unread)}: nothing in its container reads them"


def test_every_configmap_a_pod_mounts_exists(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The workers' kustomization mounts the base's settings by name: no generated suffix to miss."""
    made = {d["metadata"]["name"] for d in rendered["base"] if d["kind"] == "ConfigMap"}
    made.add("study")  # the user's: kubectl create configmap study --from-file=studies/x.yaml
    for name, docs in rendered.items():
        for where, pod in _pods(docs):
            for v in pod.get("volumes", []):
                if "configMap" in v:
                    assert v["configMap"]["name"] in made, (name, where, v)


def test_no_password_in_a_manifest_configmap_or_image(rendered: dict[str, list[dict[str, Any]]]) -> None:
    text = "\n".join(yaml.safe_dump_all(docs) for docs in rendered.values())
    text += "".join(p.read_text() for p in (ROOT / "deploy" / "docker").glob("*.Dockerfile"))
    assert _env_example()["POSTGRES_PASSWORD"] not in text
    assert not re.search(r"://[^/\s:@]+:(?!\$)[^@\s]+@", text), "a URL with a literal password"
    for docs in rendered.values():
        for d in docs:
            assert d["kind"] != "Secret", "Secrets are made from .env, never rendered from the repository"


# --- the Jobs' commands, run as written ---------------------------------------------------------

@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """Two fresh databases on the test server: Optuna's and MLflow's."""
    if not POSTGRES_URL:
        fail_without_postgres()
    optuna_url, drop_optuna = postgres_database(POSTGRES_URL)
    mlflow_url, drop_mlflow = postgres_database(POSTGRES_URL)
    yield optuna_url, mlflow_url
    drop_optuna()
    drop_mlflow()


def _as_here(docs: list[dict[str, Any]], base: list[dict[str, Any]], job: str, tmp: Path, optuna_db: str,
             mlflow_db: str, tracking: str = "http://mlflow:5000") -> tuple[list[str], dict[str, str]]:
    """A Job's container command and environment, made to run on this machine: Secret keys get
    their values, `$(NAME)`s are expanded as the kubelet does, mounted ConfigMaps become folders
    under `tmp`, and the cluster's service addresses become the test database and server."""
    pod = _find(docs, "Job", job)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    u = sa.make_url(POSTGRES_URL)
    secret = {"POSTGRES_USER": u.username or "postgres", "POSTGRES_PASSWORD": PASSWORD}
    here = f"{u.host}:{u.port or 5432}"
    settings = _find(base, "ConfigMap", "sweep-settings")["data"]["mlflow.yaml"]
    settings = (settings.replace("postgres:5432/optuna", f"{here}/{sa.make_url(optuna_db).database}")
                .replace("postgres:5432/mlflow", f"{here}/{sa.make_url(mlflow_db).database}")
                .replace("http://mlflow:5000", tracking))
    mounts = {}
    for m in container.get("volumeMounts", []):
        volume = next(v for v in pod["volumes"] if v["name"] == m["name"])
        target = tmp / m["name"]
        target.mkdir(parents=True, exist_ok=True)
        if volume["configMap"]["name"] == "sweep-settings":
            (target / "mlflow.yaml").write_text(settings)
            mounts[m["mountPath"]] = str(target / m["subPath"]) if "subPath" in m else str(target)
        else:
            mounts[m["mountPath"]] = str(target)  # the user's ConfigMap: the test puts a study there

    def local(text: str) -> str:
        for path in sorted(mounts, key=len, reverse=True):
            text = text.replace(path, mounts[path])
        return text

    env = {k: v for k, v in os.environ.items() if k not in DEPLOY_ENV}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = local(re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], e["value"]))
        elif e["valueFrom"]["secretKeyRef"]["key"] in secret:
            env[e["name"]] = secret[e["valueFrom"]["secretKeyRef"]["key"]]
        else:
            assert e["valueFrom"]["secretKeyRef"].get("optional"), e
    return [local(a) for a in container["command"]], env


def test_the_schema_jobs_command_creates_both_schemas(rendered: dict[str, list[dict[str, Any]]],
                                                       databases: tuple[str, str], tmp_path: Path) -> None:
    optuna_db, mlflow_db = databases
    command, env = _as_here(rendered["base"], rendered["base"], "sweep-schema", tmp_path, optuna_db, mlflow_db)
    for _ in range(2):  # a Job may run its pod again: the second run changes nothing and succeeds
        r = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert "schemas up to date" in r.stderr and PASSWORD not in r.stdout + r.stderr
    for url, query, expected in ((optuna_db, "SELECT study_name FROM studies", []),
                                 (mlflow_db, "SELECT name FROM experiments", [])):
        with sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1)).connect() as c:
            assert [row[0] for row in c.execute(sa.text(query))] == expected  # the tables, created empty
            assert c.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def test_the_worker_jobs_command_joins_a_study_that_sweep_run_started(
        rendered: dict[str, list[dict[str, Any]]], databases: tuple[str, str], tmp_path: Path,
        tiny_npz: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    from sweep.settings import ServerSettings
    from sweep.server import start

    optuna_db, mlflow_db = databases
    server = start(ServerSettings(port=free_port(), backend_store_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                  artifacts_destination=str(tmp_path / "artifacts")), log_path=tmp_path / "server.log")
    try:
        # the schema Job first, as on the cluster
        command, env = _as_here(rendered["base"], rendered["base"], "sweep-schema", tmp_path / "schema", optuna_db,
                                mlflow_db)
        r = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        command, env = _as_here(rendered["workers"], rendered["base"], "sweep-workers", tmp_path / "workers", optuna_db,
                                mlflow_db, tracking=server.url)
        d = study_dict(tiny_npz, sampler="random", configs=None, n_trials=3, seed=1,
                       space={"activation": ["relu", "elu", "tanh"]})
        d["study"] = "k8s"
        d["training"].update(epochs=1, batch_size=100)
        study_dir = tmp_path / "workers" / "study"  # what `kubectl create configmap study --from-file=` mounts
        write_study(study_dir, d, name="k8s.yaml")
        # `sweep run` starts the study here (one trial), then the Job's pod joins it
        first = subprocess.run([sys.executable, "-m", "sweep", "run", str(study_dir / "k8s.yaml"), "--n-trials", "1"],
                               env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr
        r = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr  # exits 0: the study has what it needs
        out = r.stdout + r.stderr
        assert PASSWORD not in out and PASSWORD not in first.stderr
    finally:
        server.stop()
    trials = optuna.load_study(study_name="k8s", storage=optuna_db.replace("postgresql://", "postgresql+psycopg2://", 1)
                               ).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, out
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # sweep run's, then the pod's
    assert mask(f"postgresql://u:{PASSWORD}@h/db") == "postgresql://u:***@h/db"
