#!/bin/sh
# The `report` entrypoint: a lane that prints a lot and keeps an artifact.
set -eu
lines=${REPORT_LINES:-3000}
greeting=$(sed -n 1p /workspace/crates/greet/tests/cases.txt | cut -d'|' -f2)
i=1
while [ "$i" -le "$lines" ]; do
  echo "report line $i of $lines: $greeting"
  i=$((i + 1))
done > "$PIKACI_ARTIFACTS/report.txt"
cat "$PIKACI_ARTIFACTS/report.txt"
printf '{"lines": %s, "job": "%s"}\n' "$lines" "$PIKACI_JOB" > "$PIKACI_ARTIFACTS/summary.json"
echo "wrote $PIKACI_ARTIFACTS/report.txt"
