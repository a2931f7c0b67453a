# PostgreSQL for the compose stack, from Debian's own package: it builds where no registry can be
# pulled from (BASE=localhost/fedsilo-base:bookworm, made by `docker/podman.sh base`), and from
# debian:bookworm-slim with Docker. One cluster, three databases: prefect, mlflow, mlflow_auth.
ARG BASE=debian:bookworm-slim
FROM ${BASE}

RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data \
 && install -d -o postgres -g postgres -m 775 /var/run/postgresql

COPY docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
