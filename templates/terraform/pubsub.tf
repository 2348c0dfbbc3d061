# Topic and subscription names are predaudit provision's (pipelines/provision.py PubSubNames);
# tests/unit/test_terraform.py keeps them identical.
locals {
  topics = toset(["predictions", "labels", "anomalies", "dead-letters", "undeliverable"])
  # audit subscriptions: read by the Dataflow job, dead-lettered to `undeliverable`
  audit_subscriptions = {
    "predictions-audit" = "predictions"
    "labels-audit"      = "labels"
  }
  # anomaly subscriptions for the alert router, one per severity (attribute filter)
  anomaly_severities = toset(["critical", "warning"])
}

resource "google_pubsub_topic" "topic" {
  for_each                   = local.topics
  name                       = each.key
  kms_key_name               = var.kms_key_name == "" ? null : var.kms_key_name
  message_retention_duration = "604800s"
}

resource "google_pubsub_subscription" "audit" {
  for_each                   = local.audit_subscriptions
  name                       = each.key
  topic                      = google_pubsub_topic.topic[each.value].id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = false
  expiration_policy {
    ttl = "" # never expires, even while the job is stopped
  }
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.topic["undeliverable"].id
    max_delivery_attempts = var.max_delivery_attempts
  }
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
}

# what Pub/Sub gave up delivering is kept here (nothing is dropped)
resource "google_pubsub_subscription" "undeliverable_hold" {
  name                       = "undeliverable-hold"
  topic                      = google_pubsub_topic.topic["undeliverable"].id
  message_retention_duration = "604800s"
  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "dead_letters_hold" {
  name                       = "dead-letters-hold"
  topic                      = google_pubsub_topic.topic["dead-letters"].id
  message_retention_duration = "604800s"
  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "anomalies" {
  for_each                   = local.anomaly_severities
  name                       = "anomalies-${each.key}"
  topic                      = google_pubsub_topic.topic["anomalies"].id
  filter                     = "attributes.severity = \"${each.key}\""
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  expiration_policy {
    ttl = ""
  }
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.topic["undeliverable"].id
    max_delivery_attempts = var.max_delivery_attempts
  }
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
}

# Dead-lettering: the Pub/Sub service agent publishes to `undeliverable` and acks on the
# dead-lettered subscriptions.
resource "google_pubsub_topic_iam_member" "undeliverable_publisher" {
  topic  = google_pubsub_topic.topic["undeliverable"].name
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_pubsub_subscription_iam_member" "audit_dead_letter_ack" {
  for_each     = merge(google_pubsub_subscription.audit, google_pubsub_subscription.anomalies)
  subscription = each.value.name
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}
