#!/bin/sh
# The compose broker's entrypoint: at the first start, make its password file and ACL on the data
# volume, then run the image's own entrypoint with the command. The files are made only when
# absent, so logins added later (docs/operator-guide.md) and an edited ACL survive every restart.
#
# The gateway's login is "gateway" with the password in the mqtt_gateway_password secret. The
# password goes through a file hashed in place (mosquitto_passwd -U), never on a command line,
# where any process of the container could read it.
set -eu

data=${MOSQUITTO_DATA:-/mosquitto/data}
secret=${GATEWAY_PASSWORD_FILE:-/run/secrets/mqtt_gateway_password}
template=${ACL_TEMPLATE:-/mosquitto/config/acl.template}
umask 077

if [ ! -e "$data/passwd" ]; then
    password=$(cat "$secret")
    if [ -z "$password" ]; then
        echo "first-start: $secret is empty; the gateway's broker password goes there" >&2
        exit 1
    fi
    printf 'gateway:%s\n' "$password" >"$data/passwd.new"
    mosquitto_passwd -U "$data/passwd.new"
    mv "$data/passwd.new" "$data/passwd"
    echo "first-start: made $data/passwd with the gateway's login"
fi
if [ ! -e "$data/acl" ]; then
    cp "$template" "$data/acl.new"
    mv "$data/acl.new" "$data/acl"
    echo "first-start: made $data/acl from $template"
fi
# The broker drops root for its own user; it must be able to read both again on SIGHUP.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown mosquitto:mosquitto "$data/passwd" "$data/acl"
fi

if [ "$#" -gt 0 ]; then
    if [ -x /docker-entrypoint.sh ]; then
        exec /docker-entrypoint.sh "$@"
    fi
    exec "$@"
fi
