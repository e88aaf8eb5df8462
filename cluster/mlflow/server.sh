#!/usr/bin/env bash
# An MLflow tracking server for a cluster: runs and metrics in a database, artifacts in a store
# the server proxies (nodes need no access of their own), bound to 127.0.0.1 unless told otherwise.
#
#   cluster/mlflow/server.sh                       # sqlite + files under ./mlflow-server, 127.0.0.1:5000
#   MLFLOW_BACKEND=postgresql://mlflow:PASSWORD@db-host/mlflow MLFLOW_ARTIFACTS=s3://bucket/mlflow \
#   MLFLOW_HOST=0.0.0.0 MLFLOW_ALLOWED_HOSTS=mlflow.internal:5000 cluster/mlflow/server.sh
#
# Jobs then log to it with MLFLOW_TRACKING_URI=http://<server>:5000 (or tracking.uri=...). Binding
# to 0.0.0.0 exposes it to every machine that can reach it: keep it on the cluster network, behind
# a proxy with authentication if that network is shared. sqlite suits one server process and a
# modest job count; use PostgreSQL or MySQL for many jobs or several server workers.
set -euo pipefail
root="${MLFLOW_ROOT:-$PWD/mlflow-server}"
backend="${MLFLOW_BACKEND:-sqlite:///$root/mlflow.db}"
artifacts="${MLFLOW_ARTIFACTS:-$root/artifacts}"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
workers="${MLFLOW_WORKERS:-1}"
extra=()
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then extra+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS"); fi
mkdir -p "$root"
exec mlflow server --backend-store-uri "$backend" --artifacts-destination "$artifacts" --serve-artifacts \
    --host "$host" --port "$port" --workers "$workers" "${extra[@]}"
