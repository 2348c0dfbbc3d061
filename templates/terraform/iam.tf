# Service accounts with least privilege:
#   pipeline      - Dataflow workers: append-only on the dataset (custom role, no delete/update,
#                   no jobs.create so no DML), consume the audit subscriptions, publish anomalies
#                   and dead letters, read the two secrets (secrets.tf), read images, use the bucket
#   sidecar       - publishes predictions and labels, nothing else
#   alert_router  - `predaudit alerts forward`: consumes the anomaly subscriptions, nothing else
resource "google_service_account" "pipeline" {
  account_id   = "predaudit-pipeline"
  display_name = "predaudit Dataflow pipeline (workers and launcher)"
}

resource "google_service_account" "sidecar" {
  account_id   = "predaudit-sidecar"
  display_name = "predaudit serving sidecar (Pub/Sub publisher only)"
}

resource "google_service_account" "alert_router" {
  account_id   = "predaudit-alert-router"
  display_name = "predaudit alert router (anomaly subscriber only)"
}

resource "google_project_iam_custom_role" "append_only" {
  role_id     = "predauditAppendOnly"
  title       = "predaudit append-only writer"
  description = "Insert rows (streaming and Storage Write API) into existing tables; no delete, no schema change, no DML"
  permissions = ["bigquery.datasets.get", "bigquery.tables.get", "bigquery.tables.updateData"]
}

resource "google_bigquery_dataset_iam_member" "pipeline_appends" {
  dataset_id = google_bigquery_dataset.audit.dataset_id
  role       = google_project_iam_custom_role.append_only.id
  member     = "serviceAccount:${google_service_account.pipeline.email}"
}

resource "google_project_iam_member" "pipeline_dataflow_worker" {
  project = var.project
  role    = "roles/dataflow.worker"
  member  = "serviceAccount:${google_service_account.pipeline.email}"
}

resource "google_pubsub_subscription_iam_member" "pipeline_consumes" {
  for_each     = toset(flatten([for s in google_pubsub_subscription.audit : [s.name]]))
  subscription = each.key
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${google_service_account.pipeline.email}"
}

# Dataflow reads the subscription's metadata (pubsub.subscriptions.get) before it pulls
resource "google_pubsub_subscription_iam_member" "pipeline_views" {
  for_each     = toset(flatten([for s in google_pubsub_subscription.audit : [s.name]]))
  subscription = each.key
  role         = "roles/pubsub.viewer"
  member       = "serviceAccount:${google_service_account.pipeline.email}"
}

resource "google_pubsub_topic_iam_member" "pipeline_publishes" {
  for_each = toset(["anomalies", "dead-letters"])
  topic    = google_pubsub_topic.topic[each.key].name
  role     = "roles/pubsub.publisher"
  member   = "serviceAccount:${google_service_account.pipeline.email}"
}

resource "google_pubsub_topic_iam_member" "sidecar_publishes" {
  for_each = toset(["predictions", "labels"])
  topic    = google_pubsub_topic.topic[each.key].name
  role     = "roles/pubsub.publisher"
  member   = "serviceAccount:${google_service_account.sidecar.email}"
}

resource "google_pubsub_subscription_iam_member" "alert_router_consumes" {
  for_each     = google_pubsub_subscription.anomalies
  subscription = each.value.name
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${google_service_account.alert_router.email}"
}

resource "google_storage_bucket_iam_member" "pipeline_bucket" {
  bucket = google_storage_bucket.predaudit.name
  role   = "roles/storage.objectAdmin" # staging and temp files of the job
  member = "serviceAccount:${google_service_account.pipeline.email}"
}

resource "google_artifact_registry_repository_iam_member" "pipeline_pulls" {
  location   = google_artifact_registry_repository.predaudit.location
  repository = google_artifact_registry_repository.predaudit.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.pipeline.email}"
}
