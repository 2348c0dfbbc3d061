# predaudit on Google Cloud: the exact commands the README's "Deploy to Google Cloud" quotes.
# tests/unit/test_deploy_commands.py runs each block through the installed Cloud SDK (they parse;
# offline they then stop at credentials). Run them from the repository root, after
# `terraform apply` in templates/terraform/ (topics, subscriptions, tables, service accounts,
# secrets). Blocks are separated by a blank line; lines starting with # are comments.
# Set first: PROJECT REGION BUCKET TAG (e.g. the git sha) CLICKHOUSE_HOST [REGISTRY: another
# project's repository, e.g. prod running the images dev ran]
REGISTRY="${REGISTRY:-$REGION-docker.pkg.dev/$PROJECT/predaudit}"
BEAM_VERSION="$(sed -n 's/^BEAM_VERSION = "\(.*\)"$/\1/p' setup.py)"
TEMPLATE="gs://$BUCKET/templates/predaudit-$TAG.json"
# the job's parameters (values with commas: the ^~^ prefix makes ~ the separator)
PARAMS="^~^sinks=bigquery,clickhouse~bq_project=$PROJECT~bq_dataset=audit\
~predictions_subscription=projects/$PROJECT/subscriptions/predictions-audit\
~labels_subscription=projects/$PROJECT/subscriptions/labels-audit\
~anomaly_topic=projects/$PROJECT/topics/anomalies\
~dead_letter_topic=projects/$PROJECT/topics/dead-letters\
~clickhouse_dsn=https://predaudit_writer@$CLICKHOUSE_HOST:8443\
~clickhouse_password_secret=projects/$PROJECT/secrets/predaudit-clickhouse-password/versions/latest\
~pii_key_secret=projects/$PROJECT/secrets/predaudit-pii-key/versions/latest\
~model_specs=gs://$BUCKET/specs/~references=gs://$BUCKET/references/\
~sdk_container_image=$REGISTRY/worker:$TAG"

# 1. worker, launcher and sidecar images (templates/cloudbuild.yaml)
gcloud builds submit --project "$PROJECT" --region "$REGION" --config templates/cloudbuild.yaml \
  --substitutions "_REGISTRY=$REGISTRY,_TAG=$TAG,_BEAM_VERSION=$BEAM_VERSION" .

# 2. the Flex Template spec (parameters from templates/metadata.json)
gcloud dataflow flex-template build "$TEMPLATE" --project "$PROJECT" \
  --image "$REGISTRY/launcher:$TAG" --sdk-language PYTHON \
  --metadata-file templates/metadata.json

# 3. start the streaming job
gcloud dataflow flex-template run predaudit-audit --project "$PROJECT" --region "$REGION" \
  --template-file-gcs-location "$TEMPLATE" \
  --service-account-email "predaudit-pipeline@$PROJECT.iam.gserviceaccount.com" \
  --staging-location "gs://$BUCKET/staging" --temp-location "gs://$BUCKET/temp" \
  --enable-streaming-engine \
  --parameters "$PARAMS"

# 4a. a new release in place: same job name, --update (renamed steps: OLD=NEW,... in RENAMES)
gcloud dataflow flex-template run predaudit-audit --project "$PROJECT" --region "$REGION" \
  --template-file-gcs-location "$TEMPLATE" --update \
  --transform-name-mappings "$RENAMES" \
  --parameters "$PARAMS"

# 4b. or drain-and-replace (an incompatible graph): find the running job (its id: JOB_ID) ...
gcloud dataflow jobs list --project "$PROJECT" --region "$REGION" --status active \
  --filter "name=predaudit-audit" --format "value(id)"

# 4c. ... drain it, wait for JOB_STATE_DRAINED, then start the new one (block 3)
gcloud dataflow jobs drain "$JOB_ID" --project "$PROJECT" --region "$REGION"
