#!/bin/sh
# As the official image's entrypoint: a server inside a container network listens on every
# interface, so Redis's protected mode (loopback only without a password) is turned off.
set -e
if [ "$1" = "redis-server" ]; then
    set -- "$@" --protected-mode no
fi
exec "$@"
