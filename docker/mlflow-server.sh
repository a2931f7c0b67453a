#!/bin/sh
# MLflow tracking server with basic auth for the compose stack. The admin account comes from the
# environment (docker/.env) when the container starts; nothing secret is baked into the image.
set -eu
umask 077
cat > /tmp/mlflow-auth.ini <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_TRACKING_USERNAME}
admin_password = ${MLFLOW_TRACKING_PASSWORD}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH=/tmp/mlflow-auth.ini
exec mlflow server --app-name basic-auth "$@"
