# The gateway alone; deploy/compose.yaml runs it with a broker, InfluxDB, Prometheus and Grafana.
# Two stages: the build tools stay out of the image that runs.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The libraries are exactly those of requirements.lock (the runtime and uvloop), each checked
# against its hashes; then the gateway's own wheel, which brings no dependency of its own.
COPY requirements.lock /tmp/requirements.lock
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --require-hashes -r /tmp/requirements.lock \
    && pip install --no-cache-dir --no-deps /wheels/*.whl && pip check \
    && rm -rf /wheels /tmp/requirements.lock \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/gateway gateway \
    && mkdir -p /var/lib/gateway /etc/gateway && chown gateway /var/lib/gateway
USER gateway
# The buffer: keep it on a volume, or a container restart loses what was not yet delivered.
VOLUME /var/lib/gateway
EXPOSE 9108
# /healthz answers 503 when the event loop stalls (a hung disk stalls it too). [metrics] listen must
# include the container's loopback (0.0.0.0:9108, as in deploy/gateway.toml).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]
# SIGTERM flushes for up to [flush] grace_s; `docker stop -t 30` leaves room for it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
CMD ["run", "--config", "/etc/gateway/gateway.toml"]
