#!/usr/bin/env bash
# Install the Debian packages of the real services the tests run: RabbitMQ, Redis and a
# Nagios-compatible scheduler. Nothing is started here: each test fixture starts a private
# instance of what it needs and stops it afterwards.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/../../packaging/install-debs.sh" rabbitmq-server redis-server nagios4-core
# Debian's packages try to start their daemons through invoke-rc.d; without systemd some of them
# may have started one anyway: stop those, the tests run their own.
# The rabbitmq-server package's scripts leave an epmd behind even when no broker runs.
if ! pgrep -x beam.smp >/dev/null 2>&1 && pgrep -x epmd >/dev/null 2>&1; then
  epmd -kill >/dev/null 2>&1 || true
fi
for name in rabbitmq-server redis-server nagios4; do
  if command -v service >/dev/null 2>&1 && service "$name" status >/dev/null 2>&1; then
    service "$name" stop >/dev/null 2>&1 || true
  fi
done
