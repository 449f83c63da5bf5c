# keyhop as a sidecar: slim Python, non-root, config at /config/keyhop.yaml.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.12-slim
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --home-dir /var/lib/keyhop --create-home keyhop \
    && mkdir -p /config && chown keyhop /config
USER keyhop
ENV KEYHOP_CONFIG=/config/keyhop.yaml \
    XDG_STATE_HOME=/var/lib/keyhop
VOLUME ["/var/lib/keyhop"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('KEYHOP_PORT', '8080') + '/-/health', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["keyhop"]
# a sidecar listens on the pod's address: set clients.keys in the config (keyhop check insists)
CMD ["serve", "--config", "/config/keyhop.yaml", "--listen", "0.0.0.0:8080"]
