{
  description = "rust-workspace: a Rust workspace (a proc-macro crate, a build script, an integration test reading a fixture file) tested by pikaci with crane and cargo-nextest";

  # Needs a current Nix (crane asks for 2.31 or newer) and network to fetch the inputs.
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    crane.url = "github:ipetkov/crane";
    # Where you keep pikaci: a git URL, or a local checkout, e.g. "path:/src/pikaci".
    pikaci.url = "path:/src/pikaci";
    pikaci.inputs.nixpkgs.follows = "nixpkgs";
    pikaci.inputs.crane.follows = "crane";
  };

  outputs =
    {
      self,
      nixpkgs,
      crane,
      pikaci,
    }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      craneLib = crane.mkLib pkgs;
      # The Rust and Cargo files, and the fixture files the integration tests read.
      src = pkgs.lib.cleanSourceWith {
        src = ./.;
        filter = path: type: craneLib.filterCargoSources path type || builtins.match ".*/tests/data(/.*)?" path != null;
      };
      common = {
        inherit craneLib src;
        pname = "rust-workspace";
        paths = [
          "crates/**"
          "Cargo.toml"
          "Cargo.lock"
        ];
      };
    in
    {
      pikaci.${system}.lanes = {
        unit = pikaci.lib.mkStagedLinuxRustLane (
          common
          // {
            description = "unit and integration tests (nextest)";
            retries = 1;
          }
        );
        # The same tests as two jobs, each half of them.
        unit-sharded = pikaci.lib.mkStagedLinuxRustLane (common // { shards = 2; });
        clippy = pikaci.lib.mkClippyLane common;
      };

      checks.${system} = pikaci.lib.mkLaneChecks {
        inherit (pkgs) runCommand;
        lanes = self.pikaci.${system}.lanes;
        workspace = self;
      };

      apps.${system}.pikaci = pikaci.apps.${system}.pikaci;
    };
}
