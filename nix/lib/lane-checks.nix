# `mkLaneChecks`: one flake check per lane, `lane-<id>`, that runs the lane's command
# against its payloads the way the guest sees them: from a read-only source snapshot
# (`workspace`), with the guest's environment variables and the lane's own, under the
# lane's timeout. `/pikaci/payloads/<name>` and `/pikaci/artifacts` in the command are
# replaced by the payloads' store paths and `$out/artifacts`.
#
# A Nix build cannot run pikaci itself (that needs `nix` and a runtime), so this checks
# the lane's content; `pikaci run --all` checks it in isolation, with a run record.
{ util }:
{
  runCommand,
  lanes,
  workspace,
}:
let
  check =
    id: l:
    let
      # Longest names first, so that `a-b` is not read as `a` followed by `-b`.
      names = builtins.sort (a: b: builtins.stringLength a > builtins.stringLength b) (
        builtins.attrNames l.payloads
      );
      guestPaths = map (n: "/pikaci/payloads/${n}") names ++ [ "/pikaci/artifacts" ];
      hostPaths = map (n: "${l.payloads.${n}}") names ++ [ "$out/artifacts" ];
      argv = map (builtins.replaceStrings guestPaths hostPaths) l.command;
      # The store paths are quoted; `$out` must still expand, so it is spliced in after.
      quoted = map (
        a:
        builtins.replaceStrings [ "$out/artifacts" ] [ "'\"$out\"'/artifacts" ] (util.escapeShellArg a)
      ) argv;
      exports = builtins.concatStringsSep "\n" (
        map (n: "export ${n}=${util.escapeShellArg l.env.${n}}") (builtins.attrNames (l.env or { }))
      );
    in
    runCommand "pikaci-lane-${id}" { } ''
      set -eu
      mkdir -p "$out/artifacts" "$TMPDIR/home"
      export HOME="$TMPDIR/home"
      export PIKACI_RUN_ID=flake-check PIKACI_JOB=${util.escapeShellArg id}
      export PIKACI_WORKSPACE=${util.escapeShellArg "${workspace}"}
      export PIKACI_ARTIFACTS="$out/artifacts"
      ${exports}
      cd "$PIKACI_WORKSPACE"
      timeout ${toString (l.timeout or 1800)} ${builtins.concatStringsSep " " quoted}
    '';
in
builtins.listToAttrs (
  map (id: {
    name = "lane-${id}";
    value = check id lanes.${id};
  }) (builtins.attrNames lanes)
)
