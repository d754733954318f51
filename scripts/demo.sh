#!/usr/bin/env bash
# The main job: the example workflow on the embedded defaults (SQLite state database + local cluster), no root.
# Prints Jobmon's status table at the end. State lives in var/demo (JOBMON_DEMO_HOME to change).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/jobmon-airflow demo "$@"
