#!/usr/bin/env bash
# One environment's deploy, run by .github/workflows/deploy.yml: the documented blocks of
# templates/deploy_commands.sh (the ones tests/unit/test_deploy_commands.py runs through the
# Cloud SDK), chosen by block number. Needs PROJECT REGION BUCKET TAG CLICKHOUSE_HOST, optional
# REGISTRY; STRATEGY=update|replace for a running job; RENAMES=OLD=NEW,... for --update.
set -euo pipefail
cd "$(dirname "$0")/.."
COMMANDS=templates/deploy_commands.sh

block() { # the paragraph of $COMMANDS whose first comment starts with "# $1 "
  awk -v RS= -v key="# $1 " 'index($0, key) == 1' "$COMMANDS"
}

# shellcheck disable=SC1090 # the variables: REGISTRY, BEAM_VERSION, TEMPLATE, PARAMS
source <(awk -v RS= 'NR == 1' "$COMMANDS")
RENAMES="${RENAMES:-}"

for n in 2. 3. 4a. 4b. 4c.; do
  test -n "$(block "$n")" || { echo "::error::$COMMANDS has no block $n" >&2; exit 1; }
done

eval "$(block 2.)" # the template spec
JOB_ID="$(eval "$(block 4b.)" | head -n 1)"
if [ -z "$JOB_ID" ]; then
  eval "$(block 3.)"
elif [ "${STRATEGY:-update}" = update ]; then
  eval "$(block 4a.)"
else
  eval "$(block 4c.)"
  for _ in $(seq 1 120); do # up to an hour
    state="$(gcloud dataflow jobs describe "$JOB_ID" --project "$PROJECT" --region "$REGION" --format 'value(currentState)')"
    [ "$state" = JOB_STATE_DRAINED ] && break
    sleep 30
  done
  [ "$state" = JOB_STATE_DRAINED ] || { echo "::error::job $JOB_ID is $state, not drained" >&2; exit 1; }
  eval "$(block 3.)"
fi
