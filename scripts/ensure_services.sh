#!/usr/bin/env bash
# Start PostgreSQL and Redis when they are installed but down. With CI=true a missing service is an error;
# elsewhere the tests that need it skip with the reason.
set -u
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! pg_up && ls /etc/postgresql >/dev/null 2>&1; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
if ! redis_up && command -v redis-server >/dev/null 2>&1; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  for _ in $(seq 1 30); do redis_up && break; sleep 1; done
fi
status=0
pg_up && echo "PostgreSQL: up" || { echo "PostgreSQL: DOWN"; status=1; }
redis_up && echo "Redis: up" || { echo "Redis: DOWN"; status=1; }
if [ "$status" -ne 0 ] && [ "${CI:-}" = "true" ]; then
  echo "CI=true and a service is missing: failing" >&2
  exit 1
fi
exit 0
