variable "project" {
  description = "Google Cloud project id"
  type        = string
}

variable "region" {
  description = "Region of the Dataflow job, the bucket, the registry and the dataset"
  type        = string
  default     = "europe-west1"
}

variable "dataset" {
  description = "BigQuery dataset of the audit tables (predaudit run --bq_dataset)"
  type        = string
  default     = "audit"
}

variable "retention_days" {
  description = "Audit rows are kept this many days: BigQuery partition expiry (ClickHouse: predaudit provision --ttl_days). 0 = forever"
  type        = number
  default     = 0
  validation {
    condition     = var.retention_days >= 0 && floor(var.retention_days) == var.retention_days
    error_message = "retention_days is a whole number of days, 0 = keep forever."
  }
}

variable "max_delivery_attempts" {
  description = "Deliveries of one message before Pub/Sub moves it to the undeliverable topic (5-100; predaudit provision --max_delivery_attempts)"
  type        = number
  default     = 10
  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be between 5 and 100."
  }
}

variable "backlog_age_alert_s" {
  description = "Alert when the oldest unacknowledged message of an audit subscription is older than this"
  type        = number
  default     = 600
}

variable "notification_channels" {
  description = "Cloud Monitoring notification channel ids for the alert policies"
  type        = list(string)
  default     = []
}

variable "github_owner" {
  description = "GitHub organisation or user of the repository whose workflows deploy (Workload Identity Federation)"
  type        = string
}

variable "github_repo" {
  description = "GitHub repository name (without the owner)"
  type        = string
}

variable "kms_key_name" {
  description = "Cloud KMS key for CMEK on topics, dataset, bucket, registry and secrets; empty = Google-managed keys"
  type        = string
  default     = ""
}
