-- The Prefect database is POSTGRES_DB; MLflow's backend store and its user database get their own.
CREATE DATABASE mlflow OWNER fedsilo;
CREATE DATABASE mlflow_auth OWNER fedsilo;
