# goblet: mitmdump with the goblet addon, as a non-root service.
#
#   docker build -t goblet:local .
#   docker run -d --name goblet -p 127.0.0.1:8080:8080 -v goblet-cache:/var/cache/goblet \
#     -v goblet-certs:/etc/goblet/certs goblet:local \
#     --listen-host 0.0.0.0 -p 8080 --set goblet_allow_open_proxy=on
#   docker cp goblet:/etc/goblet/certs/mitmproxy-ca-cert.pem .   # the CA clients trust
#   docker exec goblet goblet cache stats --cache-dir /var/cache/goblet
#
# Volumes: /var/cache/goblet (the bare-repo cache) and /etc/goblet/certs
# (mitmproxy's confdir: the CA, generated on first start if empty; clients trust
# mitmproxy-ca-cert.pem). Never bake a CA into the image: .dockerignore keeps
# certs/ out of the build context.
# Options: arguments replace CMD below, so repeat its listen address, add who
# may connect (below), then `--set name=value` (see README.md); the
# entrypoint already sets the cache dir, confdir, http2=false and flow_detail=0.
FROM python:3.11-slim-bookworm

ARG DEBIAN_FRONTEND=noninteractive
# git: fills and serving; tini: PID 1 that reaps git's children; ca-certificates:
# the public CAs (mitmproxy itself verifies upstreams with certifi).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 goblet \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/goblet --create-home \
       --shell /usr/sbin/nologin goblet

WORKDIR /opt/goblet
COPY pyproject.toml README.md ./
COPY addon ./addon
RUN pip install --no-cache-dir . \
    && mkdir -p /var/cache/goblet /etc/goblet/certs \
    && chown goblet:goblet /var/cache/goblet /etc/goblet/certs

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GOBLET_HEALTH_PORT=8080

USER 10001:10001
VOLUME ["/var/cache/goblet", "/etc/goblet/certs"]
# 8080 forward proxy, 8081 path-prefix (when goblet_prefix_port=8081), 9464 metrics
EXPOSE 8080 8081 9464

# Liveness without curl: the image's own Python asks /healthz. GOBLET_HEALTH_PORT
# is the proxy port (which answers /healthz itself) or goblet_metrics_port.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import http.client, os, sys; c = http.client.HTTPConnection('127.0.0.1', int(os.environ.get('GOBLET_HEALTH_PORT', '8080')), timeout=4); c.request('GET', '/healthz'); sys.exit(0 if c.getresponse().status == 200 else 1)"]

ENTRYPOINT ["tini", "--", "mitmdump", "-s", "/opt/goblet/addon/goblet_addon.py", \
            "--set", "confdir=/etc/goblet/certs", \
            "--set", "goblet_cache_dir=/var/cache/goblet", \
            "--set", "http2=false", "--set", "flow_detail=0"]
# 0.0.0.0 is the container's own network namespace: the host reaches it through
# the ports you publish, other containers on the same Docker network directly.
# goblet refuses to listen beyond loopback when nothing checks who connects, so
# this command alone exits at once with that refusal (`docker logs`): a bare
# `docker run -p 8080:8080` would otherwise relay for every machine that reaches
# the host. Choose on the command line (docs/operations/exposure.md): publish on
# 127.0.0.1 and add `--set goblet_allow_open_proxy=on` as above, or
# `--set proxyauth=@/etc/goblet/htpasswd` (mount one). proxyauth asks every request
# on the proxy port for credentials, /healthz too: then also
# `--set goblet_metrics_port=9464` and run the container with
# `-e GOBLET_HEALTH_PORT=9464`, or the health check fails.
CMD ["--listen-host", "0.0.0.0", "-p", "8080"]
