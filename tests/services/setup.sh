#!/usr/bin/env bash
# Install the Debian packages of the real services the tests run: RabbitMQ, Redis, two
# Nagios-compatible schedulers (nagios4, Icinga 2), InfluxDB 1.x (influxdb; influxdb-client gives
# the influx shell), Graphite's carbon-cache (with whisper's tools) and Prometheus (with promtool).
# Nothing is started here: each test fixture starts a private instance of what it needs and stops
# it afterwards.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fresh=no
for pkg in rabbitmq-server redis-server nagios4-core icinga2 influxdb prometheus; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || fresh=yes
done
bash "$here/../../packaging/install-debs.sh" rabbitmq-server redis-server nagios4-core icinga2 influxdb influxdb-client \
  openssh-server openssh-client zstd bzip2 graphite-carbon python3-whisper prometheus
# Without systemd the packages' scripts may still start daemons (or leave RabbitMQ's epmd behind)
# while they install: stop what the installation itself started, never a service already in use.
if [ "$fresh" = yes ]; then
  pkill -u rabbitmq -x beam.smp 2>/dev/null || true
  pkill -u redis -x redis-server 2>/dev/null || true
  pkill -u nagios -x nagios4 2>/dev/null || true
  pkill -u nagios -x icinga2 2>/dev/null || true
  pkill -u influxdb -x influxd 2>/dev/null || true
  pkill -u prometheus -x prometheus 2>/dev/null || true  # its init script starts it; carbon's stays off
  sleep 1
  pkill -u rabbitmq -x epmd 2>/dev/null || true
fi
