"""templates/terraform/ agrees with the code: BigQuery from schemas/tables.py (the DDL), Pub/Sub
names and dead-letter policies from ``predaudit provision``, least-privilege IAM, the secrets and
resources the documented deploy commands use. Every file parses with python-hcl2."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import hcl2
import pytest

from pipelines.provision import DEFAULT_MAX_DELIVERY_ATTEMPTS, PubSubNames
from schemas.tables import TABLES, render_ddl

ROOT = pathlib.Path(__file__).resolve().parents[2]
TF = ROOT / "templates" / "terraform"


def _clean(value: Any) -> Any:
    """python-hcl2's output without its quoting and bookkeeping keys."""
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items() if k not in ("__is_block__", "__comments__")}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"')
    return value


def _set(expr: str) -> list[str]:
    """``${toset(["a", "b"])}`` -> ["a", "b"]."""
    return json.loads(re.fullmatch(r"\$\{toset\((\[.*\])\)\}", expr).group(1))


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    """Every .tf file parsed: {"resource": {type: {name: body}}, "locals": {...}, "variable": {...}}."""
    out: dict[str, Any] = {"resource": {}, "locals": {}, "variable": {}}
    files = sorted(TF.glob("*.tf"))
    assert len(files) >= 8
    for f in files:
        doc = _clean(hcl2.loads(f.read_text()))
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                out["resource"].setdefault(rtype, {}).update(named)
        for block in doc.get("locals", []):
            out["locals"].update(block)
        for block in doc.get("variable", []):
            out["variable"].update(block)
    return out


def test_bigquery_file_is_the_generated_ddl() -> None:
    committed = json.loads((TF / "bigquery_ddl.json").read_text())
    assert committed == json.loads(render_ddl("bigquery", database="__DATASET__", project="__PROJECT__")), (
        "regenerate: predaudit schema ddl --target bigquery --project __PROJECT__ --database __DATASET__ "
        "> templates/terraform/bigquery_ddl.json"
    )
    assert [t["tableReference"]["tableId"] for t in committed["tables"]] == list(TABLES)


def test_bigquery_tables_take_schema_partitioning_and_expiry_from_it(tf) -> None:
    table = tf["resource"]["google_bigquery_table"]["table"]
    assert table["for_each"] == "${local.tables}"
    assert table["schema"] == "${jsonencode(each.value.schema.fields)}"
    assert table["clustering"] == "${each.value.clustering.fields}"
    assert table["deletion_protection"] is True
    (part,) = table["time_partitioning"]
    assert part["field"] == "${each.value.timePartitioning.field}"
    assert part["expiration_ms"] == "${local.partition_expiration_ms}"
    expiry = tf["locals"]["partition_expiration_ms"]
    assert expiry == "${var.retention_days > 0 ? var.retention_days * 86400000 : null}"  # days -> ms
    assert tf["locals"]["tables"] == "${{for t in local.ddl.tables : t.tableReference.tableId => t}}"
    assert "bigquery_ddl.json" in tf["locals"]["ddl"]
    assert set(tf["resource"]["google_bigquery_table"]) == {"table", "view"}
    assert (
        tf["resource"]["google_bigquery_routine"]["table_function"]["routine_type"] == "TABLE_VALUED_FUNCTION"
    )


def test_pubsub_matches_provision(tf) -> None:
    names = PubSubNames("p")
    assert sorted(_set(tf["locals"]["topics"])) == sorted(names.topics())
    subs = tf["resource"]["google_pubsub_subscription"]
    dead_lettered = {s for s, _, dl in names.subscriptions() if dl}
    assert tf["locals"]["audit_subscriptions"] == {s: t for s, t, dl in names.subscriptions() if dl}
    (policy,) = subs["audit"]["dead_letter_policy"]
    assert policy["dead_letter_topic"] == '${google_pubsub_topic.topic["undeliverable"].id}'
    assert policy["max_delivery_attempts"] == "${var.max_delivery_attempts}"
    assert tf["variable"]["max_delivery_attempts"]["default"] == DEFAULT_MAX_DELIVERY_ATTEMPTS
    assert subs["audit"]["retry_policy"] and subs["anomalies"]["retry_policy"]
    assert subs["undeliverable_hold"]["name"] == names.undeliverable_subscription
    assert dead_lettered == {"predictions-audit", "labels-audit"}
    # one filtered anomaly subscription per severity the monitors emit
    assert sorted(_set(tf["locals"]["anomaly_severities"])) == ["critical", "warning"]
    assert subs["anomalies"]["filter"] == 'attributes.severity = "${each.key}"'


def _members(tf, account: str) -> list[tuple[str, str]]:
    """(resource type, role) of every IAM grant to ``account``."""
    out = []
    for rtype, named in tf["resource"].items():
        if rtype.endswith("_iam_member"):
            for body in named.values():
                if body["member"] == f"serviceAccount:${{google_service_account.{account}.email}}":
                    out.append((rtype, body["role"]))
    return out


def test_least_privilege(tf) -> None:
    role = tf["resource"]["google_project_iam_custom_role"]["append_only"]
    assert sorted(role["permissions"]) == [
        "bigquery.datasets.get",
        "bigquery.tables.get",
        "bigquery.tables.updateData",
    ]
    assert not [p for p in role["permissions"] if re.search(r"delete|\.update$|jobs\.create", p)]
    assert _members(tf, "sidecar") == [("google_pubsub_topic_iam_member", "roles/pubsub.publisher")]
    sidecar = tf["resource"]["google_pubsub_topic_iam_member"]["sidecar_publishes"]
    assert _set(sidecar["for_each"]) == ["predictions", "labels"]
    assert _members(tf, "alert_router") == [
        ("google_pubsub_subscription_iam_member", "roles/pubsub.subscriber")
    ]
    pipeline = sorted(_members(tf, "pipeline"))
    assert (
        "google_bigquery_dataset_iam_member",
        "${google_project_iam_custom_role.append_only.id}",
    ) in pipeline
    assert not [r for _, r in pipeline if "bigquery" in r or r.endswith((".admin", ".owner", ".editor"))]
    assert {r for _, r in pipeline} <= {
        "${google_project_iam_custom_role.append_only.id}", "roles/dataflow.worker", "roles/pubsub.subscriber",
        "roles/pubsub.viewer", "roles/pubsub.publisher", "roles/storage.objectAdmin",
        "roles/artifactregistry.reader", "roles/secretmanager.secretAccessor",
    }  # fmt: skip
    assert not [k for k in tf["resource"] if k == "google_service_account_key"], "no key files"


def test_deploy_commands_use_these_resources(tf) -> None:
    commands = (ROOT / "templates" / "deploy_commands.sh").read_text()
    secrets = _set(tf["locals"]["secrets"])
    for name in secrets:
        assert f"/secrets/{name}/versions/latest" in commands, name
    for sub in tf["locals"]["audit_subscriptions"]:
        assert f"/subscriptions/{sub}" in commands
    for topic in ("anomalies", "dead-letters"):
        assert f"/topics/{topic}" in commands
    assert f"{tf['resource']['google_service_account']['pipeline']['account_id']}@$PROJECT" in commands
    assert tf["resource"]["google_artifact_registry_repository"]["predaudit"]["repository_id"] == "predaudit"
    assert '-docker.pkg.dev/$PROJECT/predaudit}"' in commands  # the default REGISTRY


def test_alert_policies_watch_existing_subscriptions(tf) -> None:
    policies = tf["resource"]["google_monitoring_alert_policy"]
    assert set(policies) == {"backlog_age", "critical_anomalies"}
    text = json.dumps(policies)
    assert "oldest_unacked_message_age" in text and "anomalies-critical" in text
    known = {"predictions-audit", "labels-audit", "undeliverable-hold", "anomalies-critical"}
    found = set(re.findall(r'\\"([a-z]+(?:-[a-z]+)+)\\"', text))
    assert found == known, found
