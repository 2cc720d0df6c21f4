# `mkStagedLinuxRustLane`: a lane that runs a Rust workspace's tests in the guest.
#
#   workspace-deps   crane's `buildDepsOnly`: the dependencies compiled for the same
#                    `cargo test --no-run` invocation (the cargo artifacts).
#   workspace-build  the workspace's test binaries, compiled on those artifacts, with
#                    `bin/run-tests` (the lane's command) and `share/pikaci/tests.tsv`.
#
# Options are documented in docs/lanes.md.
{ util, lane }:
{
  craneLib,
  src,
  pname ? "workspace",
  version ? "0.0.0",
  description ? "${pname}: cargo test",
  packages ? [ ],
  features ? [ ],
  allFeatures ? false,
  noDefaultFeatures ? false,
  cargoTestArgs ? [ ],
  testArgs ? [ ],
  profile ? "test",
  workspaceDir ? ".",
  craneArgs ? { },
  workspaceDeps ? null,
  extraPayloads ? { },
  env ? { },
  timeout ? 1800,
  paths ? [ ],
  runtime ? null,
}:
let
  compileArgs =
    [ "--locked" ]
    ++ util.cargoSelectionArgs {
      inherit
        packages
        features
        allFeatures
        noDefaultFeatures
        ;
    }
    ++ cargoTestArgs;

  common = craneArgs // {
    inherit src pname version;
    # Read by crane's `cargoWithProfile`; the deps and the build must agree on it.
    CARGO_PROFILE = profile;
  };

  deps =
    if workspaceDeps != null then
      workspaceDeps
    else
      util.depsPayload {
        inherit craneLib common;
        # The same invocation as the build, so that the build finds every dependency
        # (dev-dependencies included) already compiled.
        command = "cargoWithProfile test --no-run ${util.escapeShellArgs compileArgs}";
      };

  build = craneLib.mkCargoDerivation (
    common
    // {
      pnameSuffix = "-tests";
      cargoArtifacts = deps;
      doCheck = false;
      # The payload carries test binaries, not a target directory.
      doInstallCargoArtifacts = false;
      buildPhaseCargoCommand = ''
        pikaciSourceRoot=$(pwd -P)
        cargoWithProfile test --no-run ${util.escapeShellArgs compileArgs} \
          --message-format json-render-diagnostics > pikaci-cargo-messages.json
      '';
      installPhaseCommand = ". ${./collect-tests.sh}";
      pikaciWorkspaceDir = workspaceDir;
      pikaciRunTests = ./run-tests.sh;
    }
  );
in
lane.mkLane {
  inherit
    description
    timeout
    paths
    runtime
    extraPayloads
    ;
  env = {
    RUST_BACKTRACE = "1";
  }
  // env;
  payloads = {
    workspace-deps = deps;
    workspace-build = build;
  };
  command = [ "/pikaci/payloads/workspace-build/bin/run-tests" ] ++ testArgs;
}
