# pikaci's own lanes, `pikaci.<system>.lanes` of this flake: its unit tests, clippy, and
# the tests of every example workspace under examples/ (a directory with its own
# Cargo.toml and Cargo.lock). `pikaci run --all` in this repository runs them.
{
  pikaciLib,
  craneLib,
  # The crate's sources for building it, the same plus every other cargo target (tests,
  # examples) for clippy, and the repository root (for examples/).
  src,
  lintSrc ? src,
  root,
}:
let
  crateLanes = {
    unit = pikaciLib.mkStagedLinuxRustLane {
      inherit craneLib src;
      pname = "pikaci";
      description = "pikaci unit tests";
      # The integration tests (tests/*.rs) need nix and a runtime of their own; they run
      # outside the guest.
      cargoTestArgs = (if builtins.pathExists (src + "/src/lib.rs") then [ "--lib" ] else [ ]) ++ [ "--bins" ];
      paths = [
        "src/**"
        "Cargo.toml"
        "Cargo.lock"
      ];
      timeout = 900;
    };

    clippy = pikaciLib.mkClippyLane {
      inherit craneLib;
      src = lintSrc;
      pname = "pikaci";
      description = "pikaci clippy (all targets, warnings denied)";
      paths = [
        "src/**"
        "tests/**"
        "examples/**"
        "Cargo.toml"
        "Cargo.lock"
      ];
    };
  };

  examplesDir = root + "/examples";
  entries = if builtins.pathExists examplesDir then builtins.readDir examplesDir else { };
  isWorkspace =
    name:
    entries.${name} == "directory"
    && builtins.pathExists (examplesDir + "/${name}/Cargo.toml")
    && builtins.pathExists (examplesDir + "/${name}/Cargo.lock");
  exampleLane = name: {
    name = "example-${name}";
    value = pikaciLib.mkStagedLinuxRustLane {
      inherit craneLib;
      src = builtins.path {
        path = examplesDir + "/${name}";
        name = "pikaci-example-${name}";
        # A state root or build output beside the example is not its source.
        filter =
          path: _type:
          !builtins.elem (baseNameOf path) [
            ".pikaci"
            "target"
            "result"
          ];
      };
      pname = "example-${name}";
      description = "tests of the example workspace examples/${name}";
      workspaceDir = "examples/${name}";
      paths = [ "examples/${name}/**" ];
    };
  };
  exampleLanes = builtins.listToAttrs (
    map exampleLane (builtins.filter (n: isWorkspace n && pikaciLib.isValidId "example-${n}") (builtins.attrNames entries))
  );
in
crateLanes // exampleLanes
