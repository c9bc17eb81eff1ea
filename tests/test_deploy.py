"""deploy/: alert rules, dashboard, compose, Kubernetes, systemd and the Dockerfile, checked by reading them.

Docker is not available where these tests run, so the Dockerfile is checked statically (plus its HEALTHCHECK
command is run against a real server). Every `sorahook_*` metric the alert rules, the dashboard and the
Prometheus config name must exist in a real `/metrics` scrape. Where `promtool` is installed, the rules and
their unit tests (deploy/prometheus/alerts_test.yml) are checked by it too.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.cli import build_parser
from service.config import load_settings, parse_database_url
from service.domain import ERROR_CATEGORIES
from service.metrics import ARCHIVE_FAILURE_REASONS
from service.store.records import DeliveryStatus
from tests.support import ROOT, free_port, live_server, make_settings

DEPLOY = ROOT / "deploy"
METRIC_NAME = re.compile(r"\bsorahook_[a-z0-9_]+\b")

# The contract's metric names and labels (the Operations section); the matchers in alerts and panels must use these.
CONTRACT_LABELS: dict[str, set[str]] = {
    "sorahook_webhooks_received_total": {"type", "outcome"},
    "sorahook_webhook_rejections_total": {"reason"},
    "sorahook_jobs": {"kind", "status"},
    "sorahook_job_duration_seconds": {"kind", "status"},
    "sorahook_deliveries_total": {"outcome"},
    "sorahook_delivery_attempt_duration_seconds": set(),
    "sorahook_delivery_backlog": set(),
    "sorahook_event_to_delivery_seconds": set(),
    "sorahook_openai_requests_total": {"operation", "status"},
    "sorahook_openai_request_duration_seconds": {"operation"},
    "sorahook_reconciliations_total": {"outcome"},
    # beyond the contract: finished deliveries vs attempts, jobs and cost, OpenAI retries and errors
    "sorahook_delivery_attempts_total": {"outcome"},
    "sorahook_jobs_created_total": {"kind", "model"},
    "sorahook_estimated_cost_usd_total": {"model"},
    "sorahook_openai_retries_total": {"operation"},
    "sorahook_openai_errors_total": {"operation", "category"},
    "sorahook_subscriptions": {"state"},
    "sorahook_archive_failures_total": {"reason"},
}
# Closed label-value sets an exact matcher (label="value") may use.
CLOSED_VALUES: dict[tuple[str, str], set[str]] = {
    ("sorahook_deliveries_total", "outcome"): {"delivered", "dead"},
    ("sorahook_delivery_attempts_total", "outcome"): set(get_args(DeliveryStatus)) - {"pending"},
    ("sorahook_openai_errors_total", "category"): set(ERROR_CATEGORIES),
    ("sorahook_subscriptions", "state"): {"enabled", "disabled"},
    ("sorahook_archive_failures_total", "reason"): set(ARCHIVE_FAILURE_REASONS),
    ("sorahook_webhooks_received_total", "outcome"): {"accepted", "duplicate"},
    ("sorahook_reconciliations_total", "outcome"): {"updated", "unchanged", "not_found", "error"},
    ("sorahook_webhook_rejections_total", "reason"): {
        "missing_headers",
        "invalid_signature",
        "timestamp_out_of_tolerance",
        "invalid_payload",
        "body_too_large",
    },
}
SERIES_SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# --- a real scrape ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exposed_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every series name a real sorahook `/metrics` can carry, per the type of each family it exposes."""

    async def scrape() -> str:
        app = create_app(make_settings(tmp_path_factory.mktemp("scrape")))
        async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
            response = await client.get("/metrics")
            assert response.status_code == 200
            return response.text

    text = asyncio.run(scrape())
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.update({f"{family.name}_total", f"{family.name}_created"})
        elif family.type in ("histogram", "gaugehistogram"):
            names.update(f"{family.name}{suffix}" for suffix in SERIES_SUFFIXES)
        elif family.type == "summary":
            names.update({family.name, *(f"{family.name}{s}" for s in ("_count", "_sum", "_created"))})
        else:
            names.add(family.name)
    return names


def test_the_scrape_exposes_every_contract_metric(exposed_names: set[str]) -> None:
    for name in CONTRACT_LABELS:
        if name.endswith("_seconds"):  # histograms are queried through their series
            assert f"{name}_bucket" in exposed_names, name
        else:
            assert name in exposed_names, name


# --- alert rules -------------------------------------------------------------------------------------------


def _alert_rules() -> list[dict[str, Any]]:
    doc = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    assert isinstance(doc, dict) and doc["groups"], "alerts.yml must hold rule groups"
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    return dict(json.loads((DEPLOY / "grafana" / "dashboards" / "sorahook.json").read_text()))


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows nest their panels
    return found


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _panels(_dashboard()) for t in p.get("targets", []) if t.get("expr")]


def _metrics_in(text: str) -> set[str]:
    return set(METRIC_NAME.findall(text))


def _base_name(name: str) -> str:
    for suffix in SERIES_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in CONTRACT_LABELS:
            return name[: -len(suffix)]
    return name


def _check_matchers(expr: str, where: str) -> None:
    """Label names in `metric{…}` matchers are the metric's own; exact values come from the closed sets."""
    for metric, body in re.findall(r"\b(sorahook_[a-z0-9_]+)\s*\{([^}]*)\}", expr):
        base = _base_name(metric)
        allowed = CONTRACT_LABELS.get(base, set()) | {"job", "instance", "le"}
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', body):
            assert label in allowed, f"{where}: {metric} has no label {label!r}"
            closed = CLOSED_VALUES.get((base, label))
            if op == "=" and closed is not None:
                assert value in closed, (
                    f"{where}: {metric}{{{label}={value!r}}} is not a value sorahook emits"
                )


def test_alert_rules_are_valid_yaml_with_complete_rules() -> None:
    rules = _alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule[
            "alert"
        ]
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smhd]", str(rule["for"])), rule["alert"]


def test_alert_rules_cover_what_operators_must_hear_about() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in _alert_rules()}

    def alerting_on(pattern: str) -> list[str]:
        return [name for name, expr in exprs.items() if re.search(pattern, expr)]

    assert alerting_on(r"sorahook_delivery_backlog"), "delivery backlog growing"
    assert alerting_on(r'sorahook_deliveries_total\{outcome="dead"\}'), "dead deliveries"
    assert alerting_on(r"sorahook_webhook_rejections_total"), "webhook rejections rising"
    assert alerting_on(r'sorahook_subscriptions\{state="disabled"\}'), "subscriptions disabled"
    assert alerting_on(r"sorahook_archive_failures_total"), "archive failures"
    assert alerting_on(r"sorahook_delivery_attempts_total"), "delivery attempts failing"
    assert alerting_on(r'sorahook_reconciliations_total\{outcome="updated"\}'), (
        "reconciler finding missed webhooks"
    )
    openai = alerting_on(r"sorahook_openai_requests_total\{status=~")
    assert openai, "OpenAI errors"
    # the error matcher must catch what Metrics.status_label produces for 5xx, 429 and no answer
    [regex] = {m for n in openai for m in re.findall(r'status=~"([^"]+)"', exprs[n])}
    for status in ("500", "502", "503", "5xx", "429", "error"):
        assert re.fullmatch(regex, status), status
    for status in ("200", "400", "404", "4xx"):
        assert not re.fullmatch(regex, status), status


def test_the_alerts_for_disabled_subscriptions_archive_and_quota_failures_have_unit_tests() -> None:
    tests = load_yaml(DEPLOY / "prometheus" / "alerts_test.yml")["tests"]
    tested = {
        check["alertname"]
        for case in tests
        for check in case.get("alert_rule_test", [])
        if check.get("exp_alerts")  # a case where the alert is expected to fire
    }
    alerts = {rule["alert"] for rule in _alert_rules()}
    for name in (
        "SorahookSubscriptionDisabled",
        "SorahookArchiveFailures",
        "SorahookOpenAIQuotaOrBilling",
        "SorahookDeliveryFailureRateHigh",
        "SorahookDeadDeliveries",
    ):
        assert name in alerts and name in tested, name


def test_every_metric_the_deploy_files_name_exists_in_a_real_scrape(exposed_names: set[str]) -> None:
    referenced: dict[str, set[str]] = {}
    for rule in _alert_rules():
        referenced.setdefault("alerts.yml", set()).update(_metrics_in(rule["expr"]))
        _check_matchers(rule["expr"], f"alert {rule['alert']}")
        for text in rule.get("annotations", {}).values():
            referenced["alerts.yml"].update(_metrics_in(text))
    for expr in _dashboard_exprs():
        referenced.setdefault("sorahook.json", set()).update(_metrics_in(expr))
        _check_matchers(expr, "dashboard")
    referenced["prometheus.yml"] = _metrics_in((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    tests = load_yaml(DEPLOY / "prometheus" / "alerts_test.yml")
    for case in tests["tests"]:
        for series in case["input_series"]:
            referenced.setdefault("alerts_test.yml", set()).update(
                _metrics_in(series["series"].split("{")[0])
            )
    assert referenced["alerts.yml"] and referenced["sorahook.json"]
    for where, names in referenced.items():
        unknown = sorted(names - exposed_names)
        assert not unknown, f"{where} names metrics sorahook does not expose: {unknown}"
        # a histogram is only queryable through its _bucket/_sum/_count series, never by its bare name
        for name in names:
            if name.endswith("_seconds") or name == "sorahook_reconcile_pass_openai_calls":
                raise AssertionError(f"{where} uses histogram {name} without _bucket/_sum/_count")


def test_promtool_accepts_the_rules_config_and_rule_unit_tests() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    prom = DEPLOY / "prometheus"
    for args in (
        ["check", "rules", "alerts.yml"],
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "alerts_test.yml"],
    ):
        done = subprocess.run([promtool, *args], cwd=prom, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


# --- Prometheus config and Grafana -------------------------------------------------------------------------


def test_prometheus_scrapes_sorahook_and_loads_the_alert_rules() -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    rule_files = config["rule_files"]
    assert any(Path(f).name == "alerts.yml" for f in rule_files)
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "sorahook"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["sorahook:8000"]


def test_dashboard_is_valid_json_and_charts_every_contract_metric() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "sorahook" and dashboard["title"]
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    charted = {_base_name(n) for expr in _dashboard_exprs() for n in _metrics_in(expr)}
    missing = sorted(set(CONTRACT_LABELS) - charted)
    assert not missing, f"the dashboard charts no panel for {missing}"


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard_folder() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    [datasource] = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    [provider] = load_yaml(provisioning / "dashboards" / "sorahook.yml")["providers"]
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    mounts = {v.split(":")[0]: v.split(":")[1] for v in compose["services"]["grafana"]["volumes"]}
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


# --- docker compose ----------------------------------------------------------------------------------------


def test_compose_builds_the_dockerfile_and_wires_prometheus_and_grafana() -> None:
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert set(services) >= {"sorahook", "prometheus", "grafana"}
    app = services["sorahook"]
    context = (DEPLOY / app["build"]["context"]).resolve()
    assert context == ROOT.resolve(), "the build context must be the repository root"
    assert (context / app["build"]["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
    env = {e.split("=", 1)[0]: e.partition("=")[2] for e in app["environment"]}
    assert set(env) == {"SORAHOOK_DATABASE_URL"}, "settings come from the env file, never values in compose"
    assert parse_database_url(env["SORAHOOK_DATABASE_URL"]) == Path("/data/sorahook.db")
    assert any(v.endswith(":/data") for v in app["volumes"])
    assert "8000:8000" in app["ports"]
    # prometheus loads this folder's config and alert rules
    volumes = services["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes
    # every bind-mounted file or folder exists
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), volume


# Names the service reads that the env file leaves out: compose fixes the database on its volume and the
# image's command fixes the listening address; SORAHOOK_URL is read by `sorahook listen`, a client.
NOT_IN_ENV_FILE = {"SORAHOOK_DATABASE_URL", "SORAHOOK_HOST", "SORAHOOK_PORT", "SORAHOOK_URL"}
# Settings the example documents that are being added to the service alongside it (the models file, the
# OpenAI client's limits), and the AWS credentials the S3 client reads itself.
DOCUMENTED_AHEAD: set[str] = set()
SETTING = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def _env_example() -> tuple[dict[str, str], dict[str, str]]:
    """(set, shown): the lines that set a value, and the commented-out lines that show a default."""
    set_lines: dict[str, str] = {}
    shown: dict[str, str] = {}
    for raw in (DEPLOY / "sorahook.env.example").read_text().splitlines():
        line = raw.strip()
        match = SETTING.match(line)
        if match is None:
            assert not line or line.startswith("#"), f"not NAME=VALUE nor a comment: {raw!r}"
            continue
        commented, name, value = match.groups()
        assert "#" not in value, f"{name}: keep comments on their own line (systemd has no inline comments)"
        target = shown if commented else set_lines
        assert name not in set_lines and name not in shown, f"{name} appears twice"
        target[name] = value
    return set_lines, shown


def _settings_the_service_reads() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "service").rglob("*.py"):
        names.update(
            n for n in re.findall(r"\b(SORAHOOK_[A-Z0-9_]*[A-Z0-9]|OPENAI_[A-Z_]*[A-Z])\b", path.read_text())
        )
    return {
        n
        for n in names
        if n.startswith("SORAHOOK_") or n in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_WEBHOOK_SECRET")
    }


def test_compose_takes_every_setting_from_the_env_file_whose_example_lists_them_all() -> None:
    app = load_yaml(DEPLOY / "docker-compose.yml")["services"]["sorahook"]
    assert app["env_file"] == ["sorahook.env"]
    assert "deploy/sorahook.env" in (ROOT / ".gitignore").read_text().splitlines(), "it holds secrets"
    set_lines, shown = _env_example()
    listed = set(set_lines) | set(shown)
    read = _settings_the_service_reads()
    missing = sorted(read - NOT_IN_ENV_FILE - listed)
    assert not missing, f"settings the service reads that sorahook.env.example does not list: {missing}"
    unknown = sorted(n for n in listed - read - DOCUMENTED_AHEAD if not n.startswith("AWS_"))
    assert not unknown, f"sorahook.env.example lists settings the service does not read: {unknown}"
    for group in (
        "SORAHOOK_QUOTA_",
        "SORAHOOK_ARCHIVE",
        "SORAHOOK_S3_",
        "SORAHOOK_MODERATION",
        "SORAHOOK_PRICES_FILE",
    ):
        assert any(n.startswith(group) for n in listed), group


def test_the_env_example_starts_as_is_and_its_defaults_are_the_real_ones() -> None:
    set_lines, shown = _env_example()
    env = {"SORAHOOK_DATABASE_URL": "sqlite:////data/sorahook.db"}
    as_is = load_settings({**env, **set_lines})
    assert as_is.emulator, "copied as it is, the example runs the built-in emulator"
    # Uncommenting every default shown changes nothing: each shown value is the service's own default.
    read = _settings_the_service_reads()
    defaults = {name: value for name, value in shown.items() if name in read}
    assert load_settings({**env, **set_lines, **defaults}) == as_is


def test_compose_services_wait_on_health_conditions() -> None:
    services = load_yaml(DEPLOY / "docker-compose.yml")["services"]
    waited_on: set[str] = set()
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must name conditions, not only services"
        for target, rule in depends.items():
            assert rule == {"condition": "service_healthy"}, f"{name} -> {target}"
            assert "healthcheck" in services[target], f"{name} waits on {target}, which has no healthcheck"
            waited_on.add(target)
    assert waited_on >= {"sorahook", "prometheus"}
    assert services["prometheus"]["depends_on"].keys() == {"sorahook"}
    assert services["grafana"]["depends_on"].keys() == {"prometheus"}
    for service in services.values():
        if "healthcheck" in service:
            check = service["healthcheck"]
            assert check["test"][0] == "CMD" and all(k in check for k in ("interval", "timeout", "retries"))
    assert "/-/ready" in " ".join(services["prometheus"]["healthcheck"]["test"])
    assert "/api/health" in " ".join(services["grafana"]["healthcheck"]["test"])


@pytest.mark.anyio
async def test_the_compose_healthcheck_passes_once_sorahook_is_ready_and_fails_without_it(
    tmp_path: Path,
) -> None:
    test = load_yaml(DEPLOY / "docker-compose.yml")["services"]["sorahook"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    code = str(test[3])
    assert "127.0.0.1:8000/readyz" in code
    app = create_app(make_settings(tmp_path))
    async with live_server(app) as url:
        port = url.rsplit(":", 1)[1]
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code.replace(":8000", f":{port}"))
        assert await proc.wait() == 0
    dead = code.replace(":8000", f":{free_port()}")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", dead, stderr=asyncio.subprocess.DEVNULL)
    assert await proc.wait() != 0


# --- Dockerfile --------------------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, with line continuations joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "a trailing line continuation"
    result = []
    for line in logical:
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def test_dockerfile_is_slim_non_root_with_a_data_volume_and_a_healthcheck() -> None:
    steps = _instructions(DEPLOY / "Dockerfile")
    text = (DEPLOY / "Dockerfile").read_text()
    assert "python:3.11-slim" in text
    froms = [args for op, args in steps if op == "FROM"]
    assert froms, "no FROM"
    final = len(steps) - next(i for i, (op, _) in enumerate(reversed(steps)) if op == "FROM") - 1
    runtime = steps[final:]  # the instructions of the image that ships
    ops = [op for op, _ in runtime]
    [user] = [args for op, args in runtime if op == "USER"]
    assert user.split(":")[0] not in ("root", "0"), "the container must not run as root"
    assert ops.index("USER") > max(i for i, op in enumerate(ops) if op == "RUN"), "USER after the last RUN"
    assert [args for op, args in runtime if op == "VOLUME"] == ["/data"]
    assert [args for op, args in runtime if op == "EXPOSE"] == ["8000"]
    env = " ".join(args for op, args in runtime if op == "ENV")
    url = re.search(r"SORAHOOK_DATABASE_URL=(\S+)", env)
    assert url is not None and url.group(1) == "sqlite:////data/sorahook.db"
    assert load_settings({"SORAHOOK_DATABASE_URL": url.group(1)}).database_path == Path("/data/sorahook.db")
    [healthcheck] = [args for op, args in runtime if op == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "curl" not in healthcheck and "wget" not in healthcheck
    [cmd] = [args for op, args in runtime if op == "CMD"]
    assert json.loads(cmd) == ["sorahook", "serve", "--host", "0.0.0.0", "--port", "8000"]
    parsed = build_parser().parse_args(json.loads(cmd)[1:])
    assert (parsed.command, parsed.host, parsed.port) == ("serve", "0.0.0.0", 8000)
    # the build copies sources that exist at the context root and installs the project from them
    copies = [shlex.split(args) for op, args in steps if op == "COPY"]
    sources = [part for args in copies if not args[0].startswith("--from") for part in args[:-1]]
    assert {"pyproject.toml", "README.md", "service"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
    # with the s3 extra, so SORAHOOK_ARCHIVE_STORAGE=s3 works in the image
    assert any(op == "RUN" and re.search(r"pip install (\S+ )*'\.\[s3\]'(\s|$)", args) for op, args in steps)
    # the BuildKit ignore file next to the Dockerfile keeps every COPY source
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for source in sources:
        assert f"!{source}" in ignore or f"!{source}/" in ignore, source


def _healthcheck_code() -> str:
    [healthcheck] = [a for op, a in _instructions(DEPLOY / "Dockerfile") if op == "HEALTHCHECK"]
    exec_form = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert exec_form[:2] == ["python", "-c"]
    return str(exec_form[2])


@pytest.mark.anyio
async def test_the_healthcheck_command_passes_against_a_live_server_and_fails_without_one(
    tmp_path: Path,
) -> None:
    code = _healthcheck_code()
    assert "127.0.0.1:8000" in code
    app = create_app(make_settings(tmp_path))
    async with live_server(app) as url:
        port = url.rsplit(":", 1)[1]
        live = code.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", live)
        assert await proc.wait() == 0
    dead = code.replace("127.0.0.1:8000", f"127.0.0.1:{free_port()}")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", dead, stderr=asyncio.subprocess.DEVNULL)
    assert await proc.wait() != 0


# --- Kubernetes --------------------------------------------------------------------------------------------


def _k8s() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in load_yaml_all(path):
            assert "kind" in doc and "apiVersion" in doc, path.name
            docs[doc["kind"]] = doc
    return docs


def test_k8s_manifests_parse_and_the_kustomization_lists_existing_files() -> None:
    docs = _k8s()
    assert set(docs) >= {"Deployment", "PersistentVolumeClaim", "Service", "ServiceMonitor", "Secret"}
    kustomization = docs["Kustomization"]
    for resource in kustomization["resources"]:
        assert (DEPLOY / "k8s" / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"], "real secrets are created by hand"


def test_k8s_deployment_is_one_recreated_non_root_pod_with_probes_and_a_volume() -> None:
    docs = _k8s()
    deployment = docs["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1, "SQLite: one writer"
    assert spec["strategy"]["type"] == "Recreate", "two pods must never share the SQLite file"
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    [container] = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in container:
            assert container[probe]["httpGet"]["port"] in ("http", 8000)
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert parse_database_url(env["SORAHOOK_DATABASE_URL"]) == Path("/data/sorahook.db")
    [secret_ref] = [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e]
    assert secret_ref == docs["Secret"]["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    [data] = [name for name, path in mounts.items() if path == "/data"]
    assert (
        volumes[data]["persistentVolumeClaim"]["claimName"]
        == docs["PersistentVolumeClaim"]["metadata"]["name"]
    )
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    # the secret example only holds settings sorahook reads
    known = {"OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_WEBHOOK_SECRET"}
    for key in docs["Secret"]["stringData"]:
        assert key in known or key.startswith("SORAHOOK_"), key


def test_k8s_service_and_servicemonitor_select_the_pod_and_scrape_metrics() -> None:
    docs = _k8s()
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = docs["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] in ("http", 8000) and port["name"] == "http"
    monitor = docs["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"


# --- systemd -----------------------------------------------------------------------------------------------


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, line
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_is_hardened_and_stops_gracefully() -> None:
    unit = _unit(DEPLOY / "systemd" / "sorahook.service")
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service.get("DynamicUser") == "yes" or service.get("User") not in (None, "root")
    state = service["StateDirectory"]
    assert service["EnvironmentFile"].lstrip("-").startswith("/etc/")
    environment = dict(v.split("=", 1) for v in unit["Service"]["Environment"])
    assert parse_database_url(environment["SORAHOOK_DATABASE_URL"]) == Path(f"/var/lib/{state}/sorahook.db")
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"].rstrip("s")) >= 30
    start = shlex.split(service["ExecStart"])
    assert Path(start[0]).name == "sorahook" and start[1] == "serve"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert service.get(key) == value, key
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_deploy_readme_explains_each_piece() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for needle in (
        "docker build -f deploy/Dockerfile",
        "docker compose",
        "kubectl apply",
        "systemctl",
        "alerts.yml",
        "sorahook.json",
        "promtool",
        ".dockerignore",
    ):
        assert needle in readme, needle
