# Sourced by the install phase of a `workspace-build` payload (POSIX sh).
#
# Input: `pikaci-tests.tar.zst` (the nextest archive the build phase wrote),
# `$pikaciRunTests` (the entrypoint script), `$pikaciRunTestsEnv` (its settings) and
# `$pikaciStoreDir`. Output in `$out`: share/pikaci/tests.tar.zst, share/pikaci/tests.txt
# (the test binaries), share/pikaci/runtime-references, share/pikaci/run-tests.env,
# share/pikaci/payload-manifest.json and bin/run-tests.

mkdir -p "$out/bin" "$out/share/pikaci"
cp pikaci-tests.tar.zst "$out/share/pikaci/tests.tar.zst"

# The archive is compressed, so Nix cannot see the store paths its binaries use (the C
# library, say). They are listed in a plain file, so that they stay in the payload's
# closure; the Rust toolchain and the vendored sources are left out, as crane's
# removeReferences hooks leave them out of a package.
pikaci_unpacked=pikaci-tests-unpacked
mkdir -p "$pikaci_unpacked"
zstd -dc pikaci-tests.tar.zst | tar -x -C "$pikaci_unpacked"
find "$pikaci_unpacked/target" -type f -path '*/deps/*' | sed "s|^$pikaci_unpacked/||" | sort > "$out/share/pikaci/tests.txt"
pikaci_toolchain=$(rustc --print sysroot 2>/dev/null | grep -o "$pikaciStoreDir/[a-z0-9]\{32\}" || true)
pikaci_vendor=""
if [ -n "${cargoVendorDir:-}" ]; then
  pikaci_vendor=$( (echo "$cargoVendorDir"; find -L "$cargoVendorDir" -mindepth 1 -maxdepth 2 -type l -exec readlink {} \; 2>/dev/null) \
    | grep -o "$pikaciStoreDir/[a-z0-9]\{32\}" | sort -u || true)
fi
grep -rao "$pikaciStoreDir/[a-z0-9]\{32\}-[A-Za-z0-9+._?=-]*" "$pikaci_unpacked" 2>/dev/null \
  | sed 's/^[^:]*://' | sort -u > pikaci-references.all || true
: > "$out/share/pikaci/runtime-references"
while IFS= read -r pikaci_ref; do
  pikaci_hash=$(printf '%s\n' "$pikaci_ref" | grep -o "$pikaciStoreDir/[a-z0-9]\{32\}")
  case " $pikaci_toolchain $(echo $pikaci_vendor) " in *" $pikaci_hash "*) continue ;; esac
  [ -e "$pikaci_ref" ] && printf '%s\n' "$pikaci_ref" >> "$out/share/pikaci/runtime-references"
done < pikaci-references.all

printf '%s' "$pikaciRunTestsEnv" > "$out/share/pikaci/run-tests.env"
cp "$pikaciRunTests" "$out/bin/run-tests"
chmod 0755 "$out/bin/run-tests"

printf '{"schema_version":1,"kind":"workspace-build","entrypoints":["bin/run-tests"],"test_runner":"cargo-nextest"}\n' \
  > "$out/share/pikaci/payload-manifest.json"

echo "pikaci: $(wc -l < "$out/share/pikaci/tests.txt") test binaries in the nextest archive"
