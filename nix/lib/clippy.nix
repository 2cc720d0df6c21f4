# `mkClippyLane`: a lane whose job is `cargo clippy` over a Rust workspace.
#
# Clippy runs while `workspace-build` is built, on the artifacts of `workspace-deps`; its
# report and exit status are kept in the payload, and the lane's command (`bin/run-report`)
# prints the report in the guest and exits with clippy's status. So a lint is a failed
# job (exit 1), not a failed build (an infrastructure error), and the report lands in the
# job's artifacts.
{ util, lane }:
{
  craneLib,
  src,
  pname ? "workspace",
  version ? "0.0.0",
  description ? "${pname}: cargo clippy",
  packages ? [ ],
  features ? [ ],
  allFeatures ? false,
  noDefaultFeatures ? false,
  clippyArgs ? [
    "--all-targets"
    "--"
    "--deny"
    "warnings"
  ],
  # Not `test`: cargo would then check the crates in test mode only.
  profile ? "dev",
  # crane's spelling, a string of shell words added to `cargo check` and `cargo clippy`.
  cargoExtraArgs ? "",
  # crane's, with no meaning here: refused with the option to use instead.
  cargoClippyExtraArgs ? null,
  cargoTestExtraArgs ? null,
  craneArgs ? { },
  workspaceDeps ? null,
  extraPayloads ? { },
  env ? { },
  timeout ? 600,
  paths ? [ ],
  runtime ? null,
}:
let
  refused = {
    cargoClippyExtraArgs = "use `clippyArgs` (a list)";
    cargoTestExtraArgs = "a clippy lane runs no tests";
    cargoExtraArgs = "pass it as the lane's own `cargoExtraArgs`";
  };
  misplaced =
    builtins.filter (n: craneArgs ? ${n}) (builtins.attrNames refused)
    ++ builtins.filter (n: n != "cargoExtraArgs" && (if n == "cargoClippyExtraArgs" then cargoClippyExtraArgs else cargoTestExtraArgs) != null) (
      builtins.attrNames refused
    );
  extra = if cargoExtraArgs == "" then "" else " " + cargoExtraArgs;

  selection =
    [ "--locked" ]
    ++ util.cargoSelectionArgs {
      inherit
        packages
        features
        allFeatures
        noDefaultFeatures
        ;
    };

  # The scope's own clippy: the one of an overridden toolchain, else nixpkgs'.
  clippy = craneLib.callPackage ({ clippy }: clippy) { };

  common = craneArgs // {
    inherit src pname version;
    CARGO_PROFILE = profile;
  };

  deps =
    if workspaceDeps != null then
      workspaceDeps
    else
      util.depsPayload {
        inherit craneLib common;
        # Named apart from a test lane's deps, which are built differently.
        extra.pname = "${pname}-clippy";
        # Clippy needs what `cargo check` produces, for every target (dev-dependencies too).
        command = "cargoWithProfile check --all-targets ${util.escapeShellArgs selection}${extra}";
      };

  build = craneLib.mkCargoDerivation (
    common
    // {
      pnameSuffix = "-clippy";
      cargoArtifacts = deps;
      doCheck = false;
      doInstallCargoArtifacts = false;
      nativeBuildInputs = (craneArgs.nativeBuildInputs or [ ]) ++ [ clippy ];
      buildPhaseCargoCommand = ''
        if cargoWithProfile clippy ${util.escapeShellArgs selection}${extra} ${util.escapeShellArgs clippyArgs} > pikaci-report.log 2>&1; then
          pikaciStatus=0
        else
          pikaciStatus=$?
        fi
        cat pikaci-report.log
      '';
      installPhaseCommand = ''
        mkdir -p "$out/bin" "$out/share/pikaci"
        cp pikaci-report.log "$out/share/pikaci/report.log"
        echo "$pikaciStatus" > "$out/share/pikaci/status"
        cp "$pikaciRunReport" "$out/bin/run-report"
        chmod 0755 "$out/bin/run-report"
      ''
      + util.writeManifestCommand {
        schema_version = 1;
        kind = "cargo-report";
        entrypoints = [ "bin/run-report" ];
      };
      pikaciRunReport = ./run-report.sh;
    }
  );
in
if misplaced != [ ] then
  throw "pikaci lane: mkClippyLane: `${builtins.head misplaced}` is not used by this lane: ${refused.${builtins.head misplaced}}"
else
lane.mkLane {
  inherit
    description
    env
    timeout
    paths
    runtime
    extraPayloads
    ;
  payloads = {
    workspace-deps = deps;
    workspace-build = build;
  };
  command = [ "/pikaci/payloads/workspace-build/bin/run-report" ];
}
