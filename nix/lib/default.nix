# The pikaci lane library, `pikaci.lib` in the flake: builders for the
# `pikaci.<system>.lanes.<id>` entries of a project's flake (docs/lanes.md).
#
# Only builtins are used, so it works with any nixpkgs and crane revision (crane comes in
# as the `craneLib` argument) and can be evaluated without either.
let
  util = import ./util.nix;
  lane = import ./lane.nix;
in
{
  inherit (lane) mkLane isValidId;
  mkStagedLinuxRustLane = import ./staged-linux-rust.nix { inherit util lane; };
  mkClippyLane = import ./clippy.nix { inherit util lane; };
  mkLaneChecks = import ./lane-checks.nix { inherit util; };
  mkPikaciCheck = import ./pikaci-check.nix { inherit util; };
}
