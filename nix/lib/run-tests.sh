#!/bin/sh
# Entrypoint of a `workspace-build` payload: runs every test binary listed in
# share/pikaci/tests.tsv, each from its package directory in the source snapshot (as
# `cargo test` would), and all of them even when one fails. Arguments go to every binary
# (e.g. `--test-threads=1`, a test name filter).
set -u

root=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
workspace=${PIKACI_WORKSPACE:-/workspace}
list="$root/share/pikaci/tests.tsv"
tab=$(printf '\t')

passed=0
failed=0
failures=""
while IFS="$tab" read -r path cwd name; do
  [ -n "$path" ] || continue
  printf '\n     Running %s (%s)\n' "$name" "$path"
  # stdin is the list itself; a test binary must not read it.
  if (cd "$workspace/$cwd" && CARGO_MANIFEST_DIR="$workspace/$cwd" exec "$root/$path" "$@") < /dev/null; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    failures="$failures
    $name"
  fi
done < "$list"

if [ $((passed + failed)) -eq 0 ]; then
  echo "run-tests: the payload holds no test binaries (check the lane's packages and cargoTestArgs)"
fi
if [ "$failed" -gt 0 ]; then
  printf '\nfailed test binaries:%s\n' "$failures"
fi
printf '\nrun-tests: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
