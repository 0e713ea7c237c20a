#!/bin/sh
# First start only (docker-entrypoint-initdb.d): one database each for MLflow and Optuna.
set -eu
for db in ${SWEEP_DATABASES:-mlflow optuna}; do
  echo "creating database $db"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\""
done
