# Sourced by the install phase of a `workspace-build` payload (POSIX sh, no jq needed).
#
# Input: `pikaci-cargo-messages.json`, the JSON messages of `cargo test --no-run`, and
# `$pikaciSourceRoot` (where cargo ran), `$pikaciWorkspaceDir` (where that directory sits
# in the source snapshot the guest sees), `$pikaciRunTests` (the entrypoint script).
# Output in `$out`: tests/<binary>, share/pikaci/tests.tsv, share/pikaci/payload-manifest.json
# and bin/run-tests.

mkdir -p "$out/bin" "$out/tests" "$out/share/pikaci"
pikaci_list="$out/share/pikaci/tests.tsv"
pikaci_entries=pikaci-tests.json
: > "$pikaci_list"
: > "$pikaci_entries"

pikaci_json_escape() {
  printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'
}

# One JSON object per line. Test executables are the compiler artifacts built with the
# test flag in their profile; a plain binary (needed by integration tests) has it false.
grep '"reason":"compiler-artifact"' pikaci-cargo-messages.json \
  | grep -E '"profile":\{[^}]*"test":true' \
  | grep '"executable":"' > pikaci-test-artifacts.json || true

while IFS= read -r line; do
  exe=$(printf '%s\n' "$line" | sed -e 's/.*"executable":"\([^"]*\)".*/\1/')
  manifest=$(printf '%s\n' "$line" | sed -e 's/.*"manifest_path":"\([^"]*\)".*/\1/')
  kind=$(printf '%s\n' "$line" | sed -e 's/.*"target":{"kind":\["\([^"]*\)".*/\1/')
  name=$(printf '%s\n' "$line" | sed -e 's/.*"target":{[^}]*"name":"\([^"]*\)".*/\1/')

  # Each binary runs from its package directory, as under `cargo test`.
  dir=${manifest%/Cargo.toml}
  rel=${dir#"$pikaciSourceRoot"}
  if [ "$rel" = "$dir" ] || [ -z "$rel" ]; then
    cwd=$pikaciWorkspaceDir
  elif [ "$pikaciWorkspaceDir" = . ]; then
    cwd=${rel#/}
  else
    cwd=$pikaciWorkspaceDir/${rel#/}
  fi

  base=${exe##*/}
  if [ -e "$out/tests/$base" ]; then
    continue
  fi
  cp "$exe" "$out/tests/$base"
  chmod 0755 "$out/tests/$base"
  printf '%s\t%s\t%s\n' "tests/$base" "$cwd" "$name ($kind)" >> "$pikaci_list"
  printf '{"path":"%s","cwd":"%s","name":"%s"}\n' \
    "tests/$(pikaci_json_escape "$base")" "$(pikaci_json_escape "$cwd")" \
    "$(pikaci_json_escape "$name ($kind)")" >> "$pikaci_entries"
done < pikaci-test-artifacts.json

cp "$pikaciRunTests" "$out/bin/run-tests"
chmod 0755 "$out/bin/run-tests"

{
  printf '{"schema_version":1,"kind":"workspace-build","entrypoints":["bin/run-tests"],"tests":['
  sep=""
  while IFS= read -r entry; do
    printf '%s%s' "$sep" "$entry"
    sep=","
  done < "$pikaci_entries"
  printf ']}\n'
} > "$out/share/pikaci/payload-manifest.json"

echo "pikaci: $(wc -l < "$pikaci_list") test binaries in the payload"
