# Secret containers only: the values are added out of band, so they never sit in Terraform state
#   printf %s "$KEY" | gcloud secrets versions add predaudit-pii-key --data-file=-
locals {
  secrets = toset(["predaudit-pii-key", "predaudit-clickhouse-password"])
}

resource "google_secret_manager_secret" "secret" {
  for_each  = local.secrets
  secret_id = each.key
  replication {
    user_managed {
      replicas {
        location = var.region
        dynamic "customer_managed_encryption" {
          for_each = var.kms_key_name == "" ? [] : [var.kms_key_name]
          content {
            kms_key_name = customer_managed_encryption.value
          }
        }
      }
    }
  }
}

# the workers resolve --pii_key_secret / --clickhouse_password_secret
resource "google_secret_manager_secret_iam_member" "pipeline_reads" {
  for_each  = google_secret_manager_secret.secret
  secret_id = each.value.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.pipeline.email}"
}
