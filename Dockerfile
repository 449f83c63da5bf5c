# keyhop as a sidecar: slim Python, non-root, config at /config/keyhop.yaml (SPEC 4.7).
# BASE is any Debian-like image with python3 (>= 3.11) and its venv module: python:3.12-slim
# by default; `make docker-test` builds against a Debian bookworm base assembled locally
# (docker/base.sh), whose python3 lives in /usr/bin rather than /usr/local/bin. keyhop is
# installed into a venv at /opt/keyhop, so both bases put the same commands on PATH.
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
# pip reads PIP_CERT (a CA bundle) and PIP_INDEX_URL from the environment; empty is unset.
ARG PIP_CERT=""
ARG PIP_INDEX_URL=""
WORKDIR /src
# /opt/keyhop is what the image ships; /opt/build holds the build backend, which it does not.
RUN python3 -m venv /opt/keyhop && python3 -m venv /opt/build
# The dependencies first, in a layer of their own: a change to keyhop's code rebuilds only the
# layers below. tomllib is in the standard library from Python 3.11 (keyhop's minimum).
COPY pyproject.toml ./
RUN set -eu; \
    [ -n "$PIP_CERT" ] || unset PIP_CERT; [ -n "$PIP_INDEX_URL" ] || unset PIP_INDEX_URL; \
    python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
        open("dependencies.txt", "w").write("\n".join(p["project"]["dependencies"])); \
        open("requires.txt", "w").write("\n".join(p["build-system"]["requires"]))'; \
    /opt/keyhop/bin/pip install --no-cache-dir --disable-pip-version-check -r dependencies.txt; \
    /opt/build/bin/pip install --no-cache-dir --disable-pip-version-check -r requires.txt
COPY README.md ./
COPY proxy ./proxy
RUN set -eu; \
    [ -n "$PIP_CERT" ] || unset PIP_CERT; [ -n "$PIP_INDEX_URL" ] || unset PIP_INDEX_URL; \
    /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .; \
    /opt/keyhop/bin/pip install --no-cache-dir --no-index --no-deps /wheels/*.whl; \
    /opt/keyhop/bin/pip check

FROM ${BASE}
COPY --from=build /opt/keyhop /opt/keyhop
RUN useradd --uid 10001 --user-group --home-dir /var/lib/keyhop --create-home \
        --shell /usr/sbin/nologin keyhop \
    && mkdir -p /config && chown keyhop /config
USER keyhop
ENV PATH=/opt/keyhop/bin:$PATH \
    KEYHOP_CONFIG=/config/keyhop.yaml \
    XDG_STATE_HOME=/var/lib/keyhop \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/var/lib/keyhop"]
EXPOSE 8080
# The check asks 127.0.0.1:$KEYHOP_PORT (default 8080): a command that listens elsewhere sets
# KEYHOP_PORT too (a sidecar sharing the host's network picks a free port on 127.0.0.1).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/opt/keyhop/bin/python", "-c", "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('KEYHOP_PORT', '8080') + '/-/health', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["keyhop"]
# a sidecar listens on the pod's address: set clients.keys in the config (keyhop check insists)
CMD ["serve", "--config", "/config/keyhop.yaml", "--listen", "0.0.0.0:8080"]
