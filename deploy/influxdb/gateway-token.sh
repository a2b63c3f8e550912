#!/bin/sh
# Run by the influxdb image once, at its first setup (/docker-entrypoint-initdb.d), with the
# admin's CLI configuration in place: make the gateway's token, which may read and write the
# telemetry bucket and nothing else (it writes readings, and reads a device's latest values when
# its own cache has none), and leave it in $GATEWAY_TOKEN_FILE on a volume the gateway mounts
# read-only. The operator's all-access token never leaves this container.
set -eu

out=${GATEWAY_TOKEN_FILE:-/run/influx-gateway/token}
bucket_id=${DOCKER_INFLUXDB_INIT_BUCKET_ID:?the image sets it after setup}
# The gateway's user and group in the image it runs in (Dockerfile: uid and gid 10001).
gateway_uid=${GATEWAY_UID:-10001}
gateway_gid=${GATEWAY_GID:-10001}
umask 077

token=$(
    influx auth create \
        --org-id "${DOCKER_INFLUXDB_INIT_ORG_ID:?}" \
        --read-bucket "$bucket_id" \
        --write-bucket "$bucket_id" \
        --description "gateway: read and write ${DOCKER_INFLUXDB_INIT_BUCKET:-the bucket}" \
        --json |
        sed -n 's/.*"token":[[:space:]]*"\([^"]*\)".*/\1/p'
)
if [ -z "$token" ]; then
    echo "gateway-token: influx auth create gave no token" >&2
    exit 1
fi
mkdir -p "$(dirname "$out")"
printf '%s\n' "$token" >"$out.new"
# The image runs this as its own user: the directory (made by compose's
# influx-gateway-token-dir) is set-group-id to the gateway's group, which gives the token that
# group, readable by the gateway and nobody else. Run as root, the token is the gateway's own.
if [ "$(id -u)" = 0 ]; then
    chown "$gateway_uid:$gateway_gid" "$out.new"
fi
chmod 0440 "$out.new"
mv "$out.new" "$out"
echo "gateway-token: made the gateway's bucket-scoped token in $out"
