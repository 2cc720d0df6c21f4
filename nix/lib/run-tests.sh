#!/bin/sh
# Entrypoint of a `workspace-build` payload: runs the workspace's tests from the payload's
# nextest archive with cargo-nextest, every test even when one fails, from the source
# snapshot (`$PIKACI_WORKSPACE/<workspaceDir>`, each test binary in its package
# directory, as under cargo). Arguments go to `cargo-nextest nextest run` after the lane's
# own (e.g. `-E 'test(=tests::it)'`, `--no-capture`).
#
# Results: JUnit in `$PIKACI_ARTIFACTS/junit/nextest.xml`; the ignored tests, which nextest
# leaves out of its JUnit report, in `$PIKACI_ARTIFACTS/junit/nextest-ignored.xml` as
# skipped test cases. `PIKACI_SHARD=k/N` runs the k-th of N partitions.
set -u

root=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
. "$root/share/pikaci/run-tests.env"
workspace=${PIKACI_WORKSPACE:-/workspace}
artifacts=${PIKACI_ARTIFACTS:-/pikaci/artifacts}
if [ "$workspace_dir" != . ]; then
  workspace=$workspace/$workspace_dir
fi
scratch=$(mktemp -d "${TMPDIR:-/tmp}/pikaci-nextest.XXXXXX") || exit 1
junit_dir=$artifacts/junit
mkdir -p "$junit_dir" || exit 1

toml_string() {
  printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"
}

# A tool config file: below the workspace's own `.config/nextest.toml`, so the
# project's settings for the profile win, except where it leaves the JUnit path unset.
# nextest's store (by default in the workspace's target/, read-only here) goes to scratch.
cat > "$scratch/nextest.toml" <<EOF
[store]
dir = $(toml_string "$scratch/store")

[profile.$profile]
fail-fast = false

[profile.$profile.junit]
path = $(toml_string "$junit_dir/nextest.xml")
EOF

set -- --tool-config-file "pikaci:$scratch/nextest.toml" \
  --archive-file "$root/share/pikaci/tests.tar.zst" --workspace-remap "$workspace" "$@"
partition=""
if [ -n "${PIKACI_SHARD:-}" ]; then
  case "$PIKACI_SHARD" in
    *[!0-9/]* | /* | */ | */*/*)
      echo "run-tests: PIKACI_SHARD=$PIKACI_SHARD is not k/N" >&2
      exit 2
      ;;
  esac
  partition="--partition count:$PIKACI_SHARD"
fi
run_only=""
[ -n "$retries" ] && run_only="$run_only --retries $retries"
[ -n "$test_threads" ] && run_only="$run_only --test-threads $test_threads"

# The binaries are extracted under $TMPDIR; a run from a read-only snapshot needs nothing
# else. Double-spawning re-executes nextest itself, which a wrapped nextest cannot be.
export NEXTEST_DOUBLE_SPAWN="${NEXTEST_DOUBLE_SPAWN:-0}"
export TMPDIR="$scratch"

# shellcheck disable=SC2086 # $partition and $run_only are words on purpose
"$nextest" nextest run --profile "$profile" --no-fail-fast $partition $run_only "$@"
status=$?

# The ignored tests, as skipped test cases (the same partition and filters as the run).
# shellcheck disable=SC2086
if "$nextest" nextest list --profile "$profile" --run-ignored only --message-format oneline \
  $partition "$@" > "$scratch/ignored.txt" 2> "$scratch/ignored.err"; then
  xml_escape() {
    printf '%s' "$1" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g'
  }
  {
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo '<testsuites name="nextest-ignored">'
    while IFS=' ' read -r binary test; do
      [ -n "$test" ] || continue
      printf '  <testsuite name="%s"><testcase name="%s" classname="%s"><skipped message="ignored"/></testcase></testsuite>\n' \
        "$(xml_escape "$binary")" "$(xml_escape "$test")" "$(xml_escape "$binary")"
    done < "$scratch/ignored.txt"
    echo '</testsuites>'
  } > "$junit_dir/nextest-ignored.xml"
else
  echo "run-tests: the ignored tests could not be listed, so they are not counted:" >&2
  cat "$scratch/ignored.err" >&2
fi

rm -rf "$scratch"
exit "$status"
