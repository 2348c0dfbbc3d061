# predaudit's Google Cloud resources as code: Pub/Sub, BigQuery (generated from schemas/tables.py),
# service accounts with least privilege, Secret Manager secrets, Cloud Monitoring alerts, and
# the CI/CD identity (Workload Identity Federation for GitHub Actions, Artifact Registry, bucket).
#   terraform init && terraform apply -var project=my-project -var region=europe-west1 \
#     -var github_owner=my-org -var github_repo=predaudit
# Checked offline by tools/lint_infra.py (python-hcl2 parses every file; checkov, skips justified
# next to the resource they concern).
terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}

data "google_project" "this" {
  project_id = var.project
}
