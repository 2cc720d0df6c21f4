#!/bin/sh
# Entrypoint of a report payload: prints the report of the command that ran while the
# payload was built, keeps it as a job artifact, and exits with that command's status.
set -u
root=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
cat "$root/share/pikaci/report.log"
if [ -n "${PIKACI_ARTIFACTS:-}" ] && [ -d "$PIKACI_ARTIFACTS" ]; then
  cp "$root/share/pikaci/report.log" "$PIKACI_ARTIFACTS/report.log" || true
fi
status=$(cat "$root/share/pikaci/status")
exit "$status"
