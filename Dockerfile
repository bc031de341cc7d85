# One image for both processes: `mailgate gateway ...` and `mailgate operator ...`
# (the Helm chart passes the subcommand as args). Build: docker build -t mailgate .
#
# Stage 1 installs the project and its dependencies into a virtualenv; stage 2
# copies only that virtualenv onto a fresh slim base, so no compiler, pip cache
# or source tree reaches the runtime image.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/mailgate
WORKDIR /src
# Only what `pip install .` needs (see .dockerignore): metadata first, then the package.
COPY pyproject.toml README.md ./
COPY mailgate ./mailgate
# Behind a TLS-inspecting proxy pip must trust its CA: `--secret id=pip_cert,src=<CA bundle>`
# mounts the bundle for this one step, so it reaches neither a layer nor the image config
# (an ENV or --env would). Without the secret pip trusts the base image's own bundle.
RUN --mount=type=secret,id=pip_cert \
    if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && /opt/mailgate/bin/pip install . \
    && /opt/mailgate/bin/mailgate --help >/dev/null

FROM ${PYTHON_IMAGE}
# A fixed numeric non-root user, so Kubernetes can verify runAsNonRoot; the
# chart's podSecurityContext.runAsUser uses the same id.
RUN groupadd --system --gid 10001 mailgate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin mailgate
COPY --from=build /opt/mailgate /opt/mailgate
ENV PATH=/opt/mailgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# 8080 send API, probes and metrics; 8081 gateway admin API; 9090 operator metrics.
EXPOSE 8080 8081 9090
ENTRYPOINT ["mailgate"]
CMD ["--help"]
