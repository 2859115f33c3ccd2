# syntax=docker/dockerfile:1
# aks-kms-operator image: `aks-kms-operator run`, runtime dependencies only (no [lab]/[test] extras).
#
# Python follows the version the tests run on: 3.11 (pyproject requires >= 3.11; CI runs 3.11).
# The base is pinned by tag. For releases pin the digest too, resolved once on a machine with a
# Docker client and committed here:
#   docker buildx imagetools inspect python:3.11.13-slim-bookworm --format '{{json .Manifest.Digest}}'
#   docker build --build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:<digest> .
# (Renovate/Dependabot keep a tag@digest pin current.)
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
WORKDIR /src
# pyproject reads README.md for the package metadata.
COPY pyproject.toml README.md ./
COPY operator/ operator/
# The project itself with its runtime dependencies; bytecode is compiled here because the root
# filesystem is read-only at run time. pip/setuptools are not needed afterwards.
RUN /opt/venv/bin/pip install --compile . \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && /opt/venv/bin/aks-kms-operator --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="aks-kms-operator" \
      org.opencontainers.image.description="Reconciles AKS KMS etcd encryption and re-encrypts every Secret" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric UID/GID (the chart's podSecurityContext uses the same) so runAsNonRoot can be
# verified by the kubelet without a passwd lookup.
RUN groupadd --system --gid 65532 aks-kms \
 && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin aks-kms
COPY --from=build /opt/venv /opt/venv
# HOME=/tmp: the only writable path (an emptyDir in the chart) for anything that wants a home.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /tmp
# 8080: kopf liveness (/healthz); 8081: metrics.
EXPOSE 8080 8081
ENTRYPOINT ["aks-kms-operator"]
CMD ["run", "--liveness=http://0.0.0.0:8080/healthz", "--log-format=json"]
