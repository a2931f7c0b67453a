# One image for every role: the coordinator (`fedsilo run ... --mode distributed`), a silo
# (`fedsilo worker --silo NAME ...`), and the Prefect and MLflow servers of docker/compose.yaml.
#   docker build -t fedsilo .                              (official python:3.11-slim base)
#   docker/podman.sh base && docker/podman.sh build         (no registry: a debootstrap base)
ARG BASE=python:3.11-slim
FROM ${BASE}

# Only for builds without internet: pip's CA bundle and a folder of local wheels, mounted in.
ARG PIP_CERT=""
ARG PIP_FIND_LINKS=""
# Where the CPU build of torch comes from; empty means PyPI/find-links only.
ARG TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    TRANSFORMERS_VERBOSITY=error \
    FEDSILO_WORKDIR=/home/fedsilo/jobs \
    FEDSILO_HOME=/app

RUN python3 -m venv "$VIRTUAL_ENV" \
 && pip install --quiet ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} torch==2.13.0

WORKDIR /app
# Dependencies first, so code changes rebuild only the last layers.
COPY pyproject.toml constraints.txt README.md ./
RUN mkdir -p fedsilo models pipelines \
 && pip install --quiet -c constraints.txt ".[server]" \
 && pip uninstall --quiet --yes fedsilo
COPY models ./models
COPY fedsilo ./fedsilo
COPY pipelines ./pipelines
COPY scenarios ./scenarios
COPY prefect.yaml ./
COPY docker/*.sh docker/*.py ./docker/
# /mlartifacts: the MLflow server's artifact volume in docker/compose.yaml, owned by the user; so
# are the trust volumes under /var/lib/fedsilo (a silo's key, the coordinator's, the roster, the
# enrolment): Docker gives a new named volume the owner of the folder it is mounted on.
RUN pip install --quiet --no-deps . \
 && useradd --create-home --uid 10001 fedsilo \
 && fedsilo pretrain --no-mlflow --output /app/pretrained/cnn-digits.safetensors \
 && mkdir -p /mlartifacts /home/fedsilo/jobs /var/lib/fedsilo/state /var/lib/fedsilo/coordinator \
    /var/lib/fedsilo/roster /var/lib/fedsilo/enrolment \
 && chmod 700 /var/lib/fedsilo/state /var/lib/fedsilo/coordinator \
 && chown -R fedsilo /app /mlartifacts /home/fedsilo /var/lib/fedsilo

USER fedsilo
# The Prefect server writes its UI (with the API URL filled in) here; site-packages is read-only
# to the user, and without a writable folder the server runs with no UI.
ENV PREFECT_UI_STATIC_DIRECTORY=/home/fedsilo/.prefect/ui
# wait-for.sh waits for the servers named in FEDSILO_WAIT_FOR (compose), then runs fedsilo.
ENTRYPOINT ["/app/docker/wait-for.sh", "fedsilo"]
CMD ["--help"]
