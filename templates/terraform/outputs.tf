output "pipeline_service_account" {
  value = google_service_account.pipeline.email
}

output "sidecar_service_account" {
  value = google_service_account.sidecar.email
}

output "alert_router_service_account" {
  value = google_service_account.alert_router.email
}

output "deployer_service_account" {
  value = google_service_account.deployer.email
}

output "workload_identity_provider" {
  description = "google-github-actions/auth workload_identity_provider"
  value       = google_iam_workload_identity_pool_provider.github.name
}

output "registry" {
  value = "${var.region}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.predaudit.repository_id}"
}

output "bucket" {
  value = google_storage_bucket.predaudit.name
}
