# `mkStagedLinuxRustLane`: a lane that runs a Rust workspace's tests in the guest with
# cargo-nextest.
#
#   workspace-deps   crane's `buildDepsOnly`: the dependencies compiled for the same
#                    `cargo test --no-run` invocation (the cargo artifacts).
#   workspace-build  a nextest archive of the workspace's test binaries
#                    (`share/pikaci/tests.tar.zst`, with the Rust standard library that
#                    proc-macro tests link dynamically), compiled on those artifacts, and
#                    `bin/run-tests`, the lane's command, which runs it with cargo-nextest
#                    and writes JUnit to `$PIKACI_ARTIFACTS/junit/`.
#
# Options are documented in docs/lanes.md.
{ util, lane }:
{
  craneLib,
  src,
  pname ? "workspace",
  version ? "0.0.0",
  description ? "${pname}: cargo nextest",
  packages ? [ ],
  features ? [ ],
  allFeatures ? false,
  noDefaultFeatures ? false,
  cargoTestArgs ? [ ],
  # Arguments for `cargo-nextest nextest run` (e.g. `[ "-E" "not test(slow)" ]`), part of
  # the lane's command.
  testArgs ? [ ],
  profile ? "test",
  workspaceDir ? ".",
  # The nextest profile the tests run with; its JUnit report is set by the lane.
  nextestProfile ? "pikaci",
  # `--retries N`; null: the profile's setting (nextest's default: none).
  retries ? null,
  # `--test-threads N`; null: nextest's default (the number of CPUs).
  testThreads ? null,
  # The lane runs as this many jobs, each with `PIKACI_SHARD=k/N` (`--partition count:k/N`).
  shards ? 1,
  # crane's own spelling, a string of shell words added to every cargo command that
  # compiles (`cargo test --no-run`, `cargo nextest archive`), after `--locked`.
  cargoExtraArgs ? "",
  # crane arguments with no meaning here: refused with the option to use instead.
  cargoTestExtraArgs ? null,
  cargoNextestExtraArgs ? null,
  cargoClippyExtraArgs ? null,
  craneArgs ? { },
  workspaceDeps ? null,
  extraPayloads ? { },
  env ? { },
  timeout ? 1800,
  paths ? [ ],
  runtime ? null,
}@args:
let
  # crane arguments that this library builds itself: honoured where they have a meaning
  # here, refused with the option to use instead where they do not.
  refused = {
    cargoExtraArgs = "pass it as the lane's own `cargoExtraArgs`, or use `cargoTestArgs` (a list)";
    cargoTestExtraArgs = "use `cargoTestArgs` (a list); the tests run with nextest, whose arguments are `testArgs`";
    cargoNextestExtraArgs = "use `testArgs` (a list) for `nextest run`";
    cargoClippyExtraArgs = "this lane runs tests; `mkClippyLane` takes `clippyArgs`";
    buildPhaseCargoCommand = "the lane builds the test archive itself";
    installPhaseCommand = "the lane installs the test archive itself";
  };
  misplaced = builtins.filter (n: craneArgs ? ${n}) (builtins.attrNames refused);
  topRefused = builtins.filter (n: (args.${n} or null) != null) [
    "cargoTestExtraArgs"
    "cargoNextestExtraArgs"
    "cargoClippyExtraArgs"
  ];

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
  compileCommandArgs = util.escapeShellArgs compileArgs + (if cargoExtraArgs == "" then "" else " " + cargoExtraArgs);

  common = craneArgs // {
    inherit src pname version;
    # Read by crane's `cargoWithProfile`; the deps and the build must agree on it.
    CARGO_PROFILE = profile;
  };

  # The scope's cargo-nextest: nixpkgs', or an overridden one.
  nextest = craneLib.callPackage ({ cargo-nextest }: cargo-nextest) { };

  deps =
    if workspaceDeps != null then
      workspaceDeps
    else
      util.depsPayload {
        inherit craneLib common;
        # The same invocation as the build, so that the build finds every dependency
        # (dev-dependencies included) already compiled.
        command = "cargoWithProfile test --no-run ${compileCommandArgs}";
      };

  # Values for bin/run-tests, sourced by it (POSIX sh).
  runTestsEnv = ''
    nextest=${util.escapeShellArg "${nextest}/bin/cargo-nextest"}
    workspace_dir=${util.escapeShellArg workspaceDir}
    profile=${util.escapeShellArg nextestProfile}
    retries=${util.escapeShellArg (if retries == null then "" else toString retries)}
    test_threads=${util.escapeShellArg (if testThreads == null then "" else toString testThreads)}
  '';

  build = craneLib.mkCargoDerivation (
    common
    // {
      pnameSuffix = "-tests";
      cargoArtifacts = deps;
      doCheck = false;
      # The payload carries a test archive, not a target directory.
      doInstallCargoArtifacts = false;
      nativeBuildInputs =
        (craneArgs.nativeBuildInputs or [ ])
        ++ [ nextest ]
        ++ util.referenceHooks craneLib;
      buildPhaseCargoCommand = ''
        cargo nextest archive ''${CARGO_PROFILE:+--cargo-profile $CARGO_PROFILE} \
          ${compileCommandArgs} --archive-file pikaci-tests.tar.zst
      '';
      installPhaseCommand = ". ${./install-archive.sh}";
      pikaciRunTests = ./run-tests.sh;
      pikaciRunTestsEnv = runTestsEnv;
      pikaciStoreDir = builtins.storeDir;
    }
  );

  checkInt =
    name: v: min:
    if v == null || (builtins.isInt v && v >= min) then
      true
    else
      throw "pikaci lane: mkStagedLinuxRustLane: `${name}` must be a whole number >= ${toString min}, got ${builtins.toJSON v}";
in
if misplaced != [ ] then
  throw "pikaci lane: mkStagedLinuxRustLane: `craneArgs.${builtins.head misplaced}` is not used by this lane: ${refused.${builtins.head misplaced}}"
else if topRefused != [ ] then
  throw "pikaci lane: mkStagedLinuxRustLane: `${builtins.head topRefused}` is not an option: ${refused.${builtins.head topRefused}}"
else
  assert checkInt "retries" retries 0;
  assert checkInt "testThreads" testThreads 1;
  assert checkInt "shards" shards 1;
  lane.mkLane {
    inherit
      description
      timeout
      paths
      runtime
      extraPayloads
      shards
      ;
    retries = if retries == null then 0 else retries;
    # `pikaci rerun --failed` calls this with the failed tests' names (`tests::it`); the
    # words are appended to the command.
    testFilterArgs = names: [
      "-E"
      (builtins.concatStringsSep " | " (map (n: "test(=${n})") names))
    ];
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
