# The gateway alone; deploy/compose.yaml runs it with a broker, InfluxDB, Prometheus and Grafana.
# Two stages: the build tools stay out of the image that runs.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[fast]'

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /var/lib/gateway gateway \
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
