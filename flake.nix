{
  description = "pikaci: local-first CI for Rust workspaces on Nix, with lanes run in Incus or bubblewrap";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    crane.url = "github:ipetkov/crane";
  };

  outputs =
    {
      self,
      nixpkgs,
      crane,
    }:
    let
      # pikaci runs lanes in Linux guests (Incus, bubblewrap).
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);

      # `lib`, `nixosModules` and the lane records are plain Nix: evaluating them must not
      # fetch nixpkgs. Only what needs packages touches `nixpkgs` and `crane`.
      pikaciLib = import ./nix/lib;

      # Only what cargo reads, so that editing docs or Nix files does not rebuild pikaci.
      sourceOf =
        name: tops:
        builtins.path {
          path = ./.;
          inherit name;
          filter =
            path: _type:
            let
              root = toString ./.;
              rel = builtins.substring (builtins.stringLength root + 1) (builtins.stringLength (toString path)) (
                toString path
              );
            in
            builtins.elem (builtins.head (builtins.split "/" rel)) tops;
        };
      crateSrc = sourceOf "pikaci-source" [
        "Cargo.toml"
        "Cargo.lock"
        "build.rs"
        "src"
        ".cargo"
      ];
      # Clippy and rustfmt also read every other cargo target and their own settings.
      lintSrc = sourceOf "pikaci-lint-source" [
        "Cargo.toml"
        "Cargo.lock"
        "build.rs"
        "src"
        ".cargo"
        "tests"
        "examples"
        "benches"
        "clippy.toml"
        ".clippy.toml"
        "rustfmt.toml"
        ".rustfmt.toml"
      ];

      perSystem =
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
          craneLib = crane.mkLib pkgs;
          pikaci = pkgs.callPackage ./nix/package.nix {
            inherit craneLib;
            src = crateSrc;
          };
          guest-image = pkgs.callPackage ./nix/guest-image.nix {
            inherit system;
            busybox = pkgs.pkgsStatic.busybox;
          };
          lanes = import ./nix/lanes.nix {
            inherit pikaciLib craneLib lintSrc;
            src = crateSrc;
            root = ./.;
          };
        in
        {
          inherit
            pkgs
            craneLib
            pikaci
            guest-image
            lanes
            ;
        };
      bySystem = forAllSystems perSystem;
    in
    {
      packages = forAllSystems (system: {
        inherit (bySystem.${system}) pikaci guest-image;
        default = bySystem.${system}.pikaci;
      });

      apps = forAllSystems (
        system:
        let
          app = {
            type = "app";
            program = "${bySystem.${system}.pikaci}/bin/pikaci";
          };
        in
        {
          pikaci = app;
          default = app;
        }
      );

      # `nix flake check`: the package, the guest image, formatting, the NixOS module
      # (evaluated), every lane of `pikaci.<system>.lanes` (the unit tests, clippy, the
      # examples) run against its payloads, and examples/hello's lanes run through pikaci
      # itself (`examples`, `examples-failing-lane`; these need Nix's `recursive-nix`). The
      # integration tests (tests/*.rs) need Incus and sshd as well: `cargo test`.
      checks = forAllSystems (
        system:
        let
          s = bySystem.${system};
        in
        {
          inherit (s) pikaci guest-image;
          fmt = s.craneLib.cargoFmt {
            src = lintSrc;
            pname = "pikaci";
          };
          # A host with the module, evaluated (not built): NixOS type-checks every option
          # the module sets, and its assertions hold.
          nixos-module =
            let
              host = nixpkgs.lib.nixosSystem {
                inherit system;
                modules = [
                  self.nixosModules.pikaci
                  {
                    boot.isContainer = true;
                    system.stateVersion = "25.11";
                    services.pikaci = {
                      enable = true;
                      runner.enable = true;
                      runner.authorizedKeys = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPikaciModuleCheckKeyIsNotARealKey0000 check" ];
                      nixGc.enable = true;
                    };
                  }
                ];
              };
            in
            s.pkgs.runCommand "pikaci-nixos-module" {
              toplevel = builtins.unsafeDiscardStringContext host.config.system.build.toplevel.drvPath;
            } ''echo "$toplevel" > "$out"'';
        }
        // pikaciLib.mkLaneChecks {
          inherit (s.pkgs) runCommand;
          lanes = s.lanes;
          workspace = self;
        }
        // {
          # The example's passing lanes, and its failing one failing, run by pikaci.
          examples = pikaciLib.mkPikaciCheck {
            inherit (s.pkgs) runCommand;
            inherit (s) pikaci;
            name = "pikaci-examples";
            flake = ./examples/hello;
            lanes = [
              "unit"
              "report"
            ];
          };
          examples-failing-lane = pikaciLib.mkPikaciCheck {
            inherit (s.pkgs) runCommand;
            inherit (s) pikaci;
            name = "pikaci-examples-failing-lane";
            flake = ./examples/hello;
            lanes = [ "pending" ];
            expectExit = 1;
          };
        }
      );

      devShells = forAllSystems (
        system:
        let
          s = bySystem.${system};
        in
        {
          default = s.craneLib.devShell {
            inputsFrom = [ s.pikaci ];
            packages = with s.pkgs; [
              nix
              bubblewrap
              openssh
              git
              rust-analyzer
            ];
          };
        }
      );

      lib = pikaciLib;

      nixosModules = {
        pikaci = import ./nix/module.nix { packages = self.packages; };
        default = self.nixosModules.pikaci;
      };

      overlays.default = final: _prev: {
        pikaci = final.callPackage ./nix/package.nix {
          craneLib = crane.mkLib final;
          src = crateSrc;
        };
        pikaci-guest-image = final.callPackage ./nix/guest-image.nix {
          inherit (final.stdenv.hostPlatform) system;
          busybox = final.pkgsStatic.busybox;
        };
      };

      # pikaci's own CI: `nix run .#pikaci -- run --all`.
      pikaci = forAllSystems (system: {
        inherit (bySystem.${system}) lanes;
      });
    };
}
