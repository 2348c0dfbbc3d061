# What .github/workflows/deploy.yml uses: an Artifact Registry repository (immutable tags: a
# digest promoted to prod is the one tested in dev), a bucket for template specs, model specs,
# references and the job's staging/temp files, and a deployer identity that GitHub Actions
# impersonates through Workload Identity Federation (no service account keys exist).
resource "google_artifact_registry_repository" "predaudit" {
  location      = var.region
  repository_id = "predaudit"
  format        = "DOCKER"
  kms_key_name  = var.kms_key_name == "" ? null : var.kms_key_name
  docker_config {
    immutable_tags = true
  }
}

resource "google_storage_bucket" "predaudit" {
  name                        = "${var.project}-predaudit"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  versioning {
    enabled = true
  }
  dynamic "encryption" {
    for_each = var.kms_key_name == "" ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }
  #checkov:skip=CKV_GCP_62:access logs of this bucket would go to another bucket this module does not own; Data Access audit logs cover reads
}

resource "google_service_account" "deployer" {
  account_id   = "predaudit-deployer"
  display_name = "predaudit CI/CD (GitHub Actions via Workload Identity Federation)"
}

resource "google_iam_workload_identity_pool" "github" {
  workload_identity_pool_id = "github"
  display_name              = "GitHub Actions"
}

resource "google_iam_workload_identity_pool_provider" "github" {
  workload_identity_pool_id          = google_iam_workload_identity_pool.github.workload_identity_pool_id
  workload_identity_pool_provider_id = "github"
  display_name                       = "GitHub Actions OIDC"
  # only this repository's deploy jobs, each in its GitHub environment (prod is protected there)
  attribute_condition = "assertion.sub == 'repo:${var.github_owner}/${var.github_repo}:environment:dev' || assertion.sub == 'repo:${var.github_owner}/${var.github_repo}:environment:prod'"
  attribute_mapping = {
    "google.subject"        = "assertion.sub"
    "attribute.repository"  = "assertion.repository"
    "attribute.environment" = "assertion.environment"
    "attribute.ref"         = "assertion.ref"
  }
  oidc {
    issuer_uri = "https://token.actions.githubusercontent.com"
  }
}

# tokens of this repository's deploy jobs (the provider's condition admits only the dev and prod environments)
resource "google_service_account_iam_member" "deployer_wif" {
  service_account_id = google_service_account.deployer.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "principalSet://iam.googleapis.com/${google_iam_workload_identity_pool.github.name}/attribute.repository/${var.github_owner}/${var.github_repo}"
}

resource "google_project_iam_member" "deployer_dataflow" {
  project = var.project
  role    = "roles/dataflow.developer" # launch, update and drain jobs
  #checkov:skip=CKV_GCP_49:Dataflow jobs are project resources, so dataflow.developer cannot be granted narrower; the deployer may act only as the pipeline account (serviceAccountUser on that account alone)
  member = "serviceAccount:${google_service_account.deployer.email}"
}

resource "google_service_account_iam_member" "deployer_acts_as_pipeline" {
  service_account_id = google_service_account.pipeline.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.deployer.email}"
}

resource "google_artifact_registry_repository_iam_member" "deployer_pushes" {
  location   = google_artifact_registry_repository.predaudit.location
  repository = google_artifact_registry_repository.predaudit.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.deployer.email}"
}

resource "google_storage_bucket_iam_member" "deployer_bucket" {
  bucket = google_storage_bucket.predaudit.name
  role   = "roles/storage.objectAdmin" # template specs
  member = "serviceAccount:${google_service_account.deployer.email}"
}
