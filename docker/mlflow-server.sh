#!/bin/sh
# MLflow tracking server with basic auth for the compose stack. The admin account comes from the
# environment (docker/.env) when the container starts; nothing secret is baked into the image.
# default_permission NO_PERMISSIONS: a user sees only what it was granted (docker/mlflow_users.py
# gives each silo EDIT on its own scenarios' experiments); the admin sees everything.
set -eu
umask 077
cat > /tmp/mlflow-auth.ini <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_ADMIN_USER}
admin_password = ${MLFLOW_ADMIN_PASSWORD}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
unset MLFLOW_ADMIN_PASSWORD
export MLFLOW_AUTH_CONFIG_PATH=/tmp/mlflow-auth.ini
exec mlflow server --app-name basic-auth "$@"
