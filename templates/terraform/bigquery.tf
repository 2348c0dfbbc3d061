# The audit dataset, tables, views and table function, GENERATED from schemas/tables.py:
#   predaudit schema ddl --target bigquery --project __PROJECT__ --database __DATASET__ \
#     > templates/terraform/bigquery_ddl.json
# (tests/unit/test_terraform.py fails when the committed file differs from that output).
locals {
  ddl    = jsondecode(file("${path.module}/bigquery_ddl.json"))
  tables = { for t in local.ddl.tables : t.tableReference.tableId => t }
  views = {
    for v in local.ddl.views : v.name => replace(replace(v.query, "__PROJECT__", var.project), "__DATASET__", var.dataset)
  }
  table_functions = {
    for f in local.ddl.table_functions :
    regex("\\.([A-Za-z0-9_]+)`\\(", f)[0] => replace(replace(regex("\\) AS (.*)$", f)[0], "__PROJECT__", var.project), "__DATASET__", var.dataset)
  }
  partition_expiration_ms = var.retention_days > 0 ? var.retention_days * 86400000 : null
}

resource "google_bigquery_dataset" "audit" {
  dataset_id                 = var.dataset
  location                   = var.region
  description                = "predaudit: immutable audit rows (insert-only for the pipeline)"
  delete_contents_on_destroy = false
  dynamic "default_encryption_configuration" {
    for_each = var.kms_key_name == "" ? [] : [var.kms_key_name]
    content {
      kms_key_name = default_encryption_configuration.value
    }
  }
}

resource "google_bigquery_table" "table" {
  for_each            = local.tables
  dataset_id          = google_bigquery_dataset.audit.dataset_id
  table_id            = each.key
  description         = each.value.description
  schema              = jsonencode(each.value.schema.fields)
  clustering          = each.value.clustering.fields
  deletion_protection = true
  time_partitioning {
    type          = each.value.timePartitioning.type
    field         = each.value.timePartitioning.field
    expiration_ms = local.partition_expiration_ms
  }
  dynamic "encryption_configuration" {
    for_each = var.kms_key_name == "" ? [] : [var.kms_key_name]
    content {
      kms_key_name = encryption_configuration.value
    }
  }
}

resource "google_bigquery_table" "view" {
  for_each            = local.views
  dataset_id          = google_bigquery_dataset.audit.dataset_id
  table_id            = each.key
  deletion_protection = true
  #checkov:skip=CKV_GCP_80:a view stores no data (its tables are encrypted with the dataset's key)
  view {
    query          = each.value
    use_legacy_sql = false
  }
  depends_on = [google_bigquery_table.table]
}

resource "google_bigquery_routine" "table_function" {
  for_each        = local.table_functions
  dataset_id      = google_bigquery_dataset.audit.dataset_id
  routine_id      = each.key
  routine_type    = "TABLE_VALUED_FUNCTION"
  language        = "SQL"
  definition_body = each.value
  arguments {
    name      = "from_ts"
    data_type = jsonencode({ typeKind = "TIMESTAMP" })
  }
  arguments {
    name      = "to_ts"
    data_type = jsonencode({ typeKind = "TIMESTAMP" })
  }
  depends_on = [google_bigquery_table.table]
}
