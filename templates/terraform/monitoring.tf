# Alerts: the audit subscriptions fall behind (oldest unacked message age), messages were
# dead-lettered by Pub/Sub, and critical anomalies are flowing (or waiting) on anomalies-critical.
resource "google_monitoring_alert_policy" "backlog_age" {
  display_name          = "predaudit: audit subscription backlog age"
  combiner              = "OR"
  notification_channels = var.notification_channels
  conditions {
    display_name = "oldest unacked message older than ${var.backlog_age_alert_s}s"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" AND resource.labels.subscription_id = one_of(\"predictions-audit\", \"labels-audit\")"
      comparison      = "COMPARISON_GT"
      threshold_value = var.backlog_age_alert_s
      duration        = "300s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }
  conditions {
    display_name = "messages dead-lettered to undeliverable"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.labels.subscription_id = \"undeliverable-hold\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }
  documentation {
    content   = "The Dataflow job is behind or stopped (see its page), or Pub/Sub gave up delivering messages (pull undeliverable-hold). README: Deploy to Google Cloud."
    mime_type = "text/markdown"
  }
}

resource "google_monitoring_alert_policy" "critical_anomalies" {
  display_name          = "predaudit: critical anomalies"
  combiner              = "OR"
  notification_channels = var.notification_channels
  conditions {
    display_name = "critical anomaly events delivered"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND metric.type = \"pubsub.googleapis.com/subscription/sent_message_count\" AND resource.labels.subscription_id = \"anomalies-critical\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_SUM"
      }
    }
  }
  conditions {
    display_name = "critical anomaly events waiting (alert router down?)"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.labels.subscription_id = \"anomalies-critical\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "300s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }
  documentation {
    content   = "A drift, data-quality or performance monitor crossed its critical threshold. Alertmanager has the details (predaudit alerts forward); the anomalies table has the history."
    mime_type = "text/markdown"
  }
}
