#!/bin/sh
# The `workspace-build` entrypoint: runs the workspace's test cases from /workspace
# against the greeting built into this payload. Usage: run-tests [CASES.txt ...]
set -eu
build=/pikaci/payloads/workspace-build
deps=/pikaci/payloads/workspace-deps
cd /workspace

if ! cmp -s Cargo.lock "$deps/share/deps/Cargo.lock"; then
  echo "error: workspace-deps was built from another Cargo.lock" >&2
  exit 2
fi
echo "running greet tests ($(wc -l < "$deps/share/deps/packages.txt") locked packages)"

[ "$#" -gt 0 ] || set -- crates/greet/tests/cases.txt
passed=0
failed=0
for table in "$@"; do
  while IFS='|' read -r name expected; do
    got=$(printf "$(cat "$build/share/greet/format")" "$name")
    if [ "$got" = "$expected" ]; then
      echo "test greet($name) ... ok"
      passed=$((passed + 1))
    else
      echo "test greet($name) ... FAILED: got '$got', expected '$expected'"
      failed=$((failed + 1))
    fi
  done < "$table"
done
echo "test result: $passed passed; $failed failed"
[ "$failed" -eq 0 ]
