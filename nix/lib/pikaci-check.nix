# `mkPikaciCheck`: a flake check that runs lanes through pikaci itself, the way a developer
# does: pikaci evaluates the flake's lanes, realizes their payloads as GC roots and runs each
# command in a bubblewrap sandbox, inside the build. The run's record (run.json,
# events.jsonl, each job's job.json, logs and artifacts) is the check's output.
#
# pikaci calls `nix` from inside the build, so the check needs Nix's `recursive-nix`
# (`experimental-features = ... recursive-nix` in nix.conf; the feature then also counts as
# a system feature). Without it Nix refuses the build and names the missing feature.
{ util }:
{
  # nixpkgs' `runCommand`.
  runCommand,
  # The pikaci package (its `bin/pikaci` finds nix and bwrap on PATH).
  pikaci,
  # The flake whose lanes run: a path (a `.pikaci` state root or `target/` in it is left
  # out) or a store path such as a flake's `self`.
  flake,
  # Lane ids; empty runs them all.
  lanes ? [ ],
  # The exit code the run must end with: 0 every job passed, 1 a job failed or timed out.
  expectExit ? 0,
  name ? "pikaci-run",
}:
let
  source =
    if builtins.isPath flake then
      builtins.path {
        path = flake;
        name = "${name}-flake";
        # Only at the top: a `target` directory deeper down may be source.
        filter =
          path: _type:
          !builtins.elem path [
            "${toString flake}/.pikaci"
            "${toString flake}/target"
          ];
      }
    else
      flake;
  selection = if lanes == [ ] then "--all" else util.escapeShellArgs lanes;
in
if !builtins.elem expectExit [
  0
  1
] then
  throw "mkPikaciCheck: expectExit is ${builtins.toJSON expectExit}; it is 0 (every job passed) or 1 (a job failed or timed out)"
else
runCommand name
  { requiredSystemFeatures = [ "recursive-nix" ]; }
  ''
    export HOME="$TMPDIR/home" XDG_CACHE_HOME="$TMPDIR/cache"
    mkdir -p "$HOME"
    state="$TMPDIR/state"
    code=0
    ${pikaci}/bin/pikaci --state-root "$state" --flake ${util.escapeShellArg "path:${source}"} \
      run --runtime bwrap ${selection} || code=$?

    # The record, without the payloads' GC-root links (the build's roots are gone with it).
    mkdir -p "$out"
    if [ -d "$state/runs" ]; then
      cp -R "$state/runs" "$out/runs"
      find "$out/runs" -path '*/staged-linux-rust/*' -type l -exec rm -f {} +
    fi
    echo "$code" > "$out/exit-code"

    if [ "$code" != ${toString expectExit} ]; then
      echo "pikaci exited with $code; this check expects ${toString expectExit} (0: every job passed, 1: a job failed, 2: configuration, 3: infrastructure)" >&2
      exit 1
    fi
  ''
